"""specdecode: fast, lossless decoding for Hugging Face causal language models."""

__version__ = "0.1.0"

from specdecode.errors import SpecDecodeError  # noqa: E402

__all__ = ["SpecDecodeError", "__version__", "generate", "stream", "load_model"]


def __getattr__(name):  # lazy: `import specdecode` must not import torch
    if name in ("generate", "stream"):
        from specdecode import api

        return getattr(api, name)
    if name == "load_model":
        from specdecode.models.loader import load_model

        return load_model
    raise AttributeError(name)
