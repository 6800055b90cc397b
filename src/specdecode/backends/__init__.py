"""Backends: what runs the target model's forward under the drafters and the verifier.

- ``transformers`` (the default and the reference): :class:`specdecode.target.Target` on a
  PyTorch model loaded by :func:`specdecode.models.loader.load_model`.
- ``llama.cpp``: a GGUF file run by llama.cpp through llama-cpp-python's low-level API
  (:mod:`specdecode.backends.llamacpp`; the optional extra ``llamacpp``). The tokenizer is the
  Hugging Face one transformers builds from the same GGUF, so drafters, prompts and text are
  the same; only the forward differs.

A loaded model of another backend says so by a ``new_target()`` method (see
:func:`specdecode.target.new_target`).
"""

from __future__ import annotations

from specdecode.errors import SpecDecodeError

BACKENDS = {
    "transformers": "PyTorch + Hugging Face transformers (default; the reference)",
    "llama.cpp": "a GGUF file run by llama.cpp (pip install -e '.[llamacpp]'); CPU",
}
_ALIASES = {"hf": "transformers", "torch": "transformers", "llamacpp": "llama.cpp", "llama-cpp": "llama.cpp"}

BACKEND_HELP = (
    "what runs the target model: transformers (default, the reference) or llama.cpp (the GGUF "
    "file in llama.cpp via llama-cpp-python, CPU; every train-free method works on it, greedy "
    "output identical to llama.cpp's own greedy decoding of the same file; with --dtype float32 "
    "or bfloat16 the GGUF is first converted to that format once and cached; --threads sets its "
    "thread count too)"
)


def check_backend(name: str | None) -> str:
    """The canonical backend name for ``name`` (None: transformers); a SpecDecodeError naming
    the choices otherwise."""
    if name is None:
        return "transformers"
    if not isinstance(name, str):
        raise SpecDecodeError(f"backend must be a string, got {type(name).__name__} {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BACKENDS:
        raise SpecDecodeError(f"unknown backend '{name}': use {' or '.join(BACKENDS)}")
    return key


def add_backend_argument(group) -> None:
    """``--backend`` on an argparse group."""
    group.add_argument(
        "--backend", default="transformers", metavar="{transformers,llama.cpp}", help=BACKEND_HELP
    )


def backend_of(loaded) -> str:
    """The backend a loaded model runs on."""
    return getattr(loaded, "backend", "transformers")


def new_target(loaded):
    """A fresh target (its own KV cache) for one generation on ``loaded``: the backend's own
    (``loaded.new_target()``) when it has one, else :class:`specdecode.target.Target`."""
    make = getattr(loaded, "new_target", None)
    if make is not None:
        return make()
    from specdecode.target import Target

    return Target(loaded)


def close_target(target) -> None:
    """Hand back what a target holds (a llama.cpp context goes back to its pool)."""
    close = getattr(target, "close", None)
    if close is not None:
        close()


def transformers_twin(loaded):
    """The same weights loaded in transformers: ``loaded`` itself on the transformers backend;
    for another backend, its own ``transformers_twin()`` (the transformers baselines of
    ``bench`` run on it)."""
    twin = getattr(loaded, "transformers_twin", None)
    return loaded if twin is None else twin()
