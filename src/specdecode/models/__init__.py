"""Model loading (the embedded default, GGUF files, HF folders, hub ids) and the on-disk cache."""

from specdecode.models.cache import cache_dir
from specdecode.models.default import default_gguf_path
from specdecode.models.loader import LoadedModel, clear_memo, load_model, resolve_device, resolve_dtype

__all__ = [
    "LoadedModel",
    "cache_dir",
    "clear_memo",
    "default_gguf_path",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]
