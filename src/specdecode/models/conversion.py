"""The conversion cache: a GGUF file dequantized once into a plain float32 safetensors folder,
``<cache>/models/<name>-<sha16>/``, which later loads take.

A converted folder is trusted only if its ``specdecode-complete.json`` marker, written last
before an atomic rename, matches the GGUF's sha256 and the files on disk: their sizes, and
their contents by the sha256 of every file, recorded at conversion and read again before
each load. A folder that fails the check is converted again, with one line on stderr saying
why; a marker without digests (written by specdecode before they existed) fails it too, as
nothing vouches for the bytes it lists.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import torch

from specdecode import __version__
from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_folder, read_marker, remove_path, sha256_file, write_atomic
from specdecode.models.cache import cache_dir, check_writable
from specdecode.models.quiet import one_line, quiet_transformers

MARKER_NAME = "specdecode-complete.json"
CONVERSION_FORMAT = "specdecode-gguf-conversion"
CONVERSION_FORMAT_VERSION = 1


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


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


def _marker_problem(data: dict, gguf_sha256: str) -> str | None:
    """What is wrong with a parsed marker of the right format, or None."""
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
    data, problem = read_marker(folder, MARKER_NAME, (CONVERSION_FORMAT, CONVERSION_FORMAT_VERSION))
    if problem is not None:
        return problem
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


def rebuild_conversion(gguf: Path, sha256: str, final: Path, problem: str) -> None:
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
