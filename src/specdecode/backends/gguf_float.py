"""Float copies of a GGUF file, for the llama.cpp backend: every tensor dequantized with the
``gguf`` package and written as F32, BF16 or F16 into a new GGUF with the same metadata and
tokenizer (only ``general.file_type`` changes), once, cached in
``<cache>/gguf-float/<name>-<sha16>-<F32|BF16|F16>/model.gguf``.

The F32 copy holds exactly the weights transformers loads from the same file (it dequantizes
with the same package), so llama.cpp and transformers run the same numbers; BF16 and F16 are
those rounded to nearest. One-dimensional tensors (the norms) stay F32, as llama.cpp's own
converter keeps them.

A copy is trusted only when its ``specdecode-complete.json`` marker, written last before the
folder is renamed into place, names the source's sha256 and the copy's size and sha256, and
the file on disk has them (hashed before each load, once per process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from specdecode import __version__
from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_folder, read_marker, remove_path, sha256_file, write_atomic
from specdecode.models.cache import cache_dir, check_writable
from specdecode.models.conversion import _safe_name
from specdecode.models.quiet import one_line

MARKER_NAME = "specdecode-complete.json"
FILE_NAME = "model.gguf"
FORMAT = "specdecode-gguf-float"
FORMAT_VERSION = 1
# torch dtype -> (name, llama.cpp's general.file_type: LLAMA_FTYPE_ALL_F32, _MOSTLY_F16, _MOSTLY_BF16)
FLOAT_FORMATS = {torch.float32: ("F32", 0), torch.float16: ("F16", 1), torch.bfloat16: ("BF16", 32)}


def float_gguf_dir(source: Path, sha256: str, dtype: torch.dtype) -> Path:
    name = source.name[: -len(".gguf")] if source.name.lower().endswith(".gguf") else source.name
    return cache_dir() / "gguf-float" / f"{_safe_name(name)}-{sha256[:16]}-{FLOAT_FORMATS[dtype][0]}"


def float_gguf_problem(folder: Path, source_sha256: str) -> str | None:
    """Why ``folder`` is not a trusted float copy of the GGUF with this sha256, or None."""
    data, problem = read_marker(folder, MARKER_NAME, (FORMAT, FORMAT_VERSION))
    if problem is not None:
        return problem
    if data.get("source_sha256") != source_sha256:
        return "its marker names another GGUF"
    path = folder / FILE_NAME
    try:
        size = path.stat().st_size
    except OSError:
        return f"{FILE_NAME} is missing"
    if size != data.get("size"):
        return f"{FILE_NAME} has {size} bytes, its marker says {data.get('size')}"
    if sha256_file(path, remember=True) != data.get("sha256"):
        return f"{FILE_NAME} does not match its sha256: changed or damaged on disk"
    return None


def float_gguf(source: Path, sha256: str, dtype: torch.dtype) -> Path:
    """The float copy of GGUF ``source`` (sha256 ``sha256``) in ``dtype``: the cached one when
    intact, else written now (saying so on stderr) and checked."""
    if dtype not in FLOAT_FORMATS:
        raise SpecDecodeError(f"no GGUF float format for {dtype}: use float32, bfloat16 or float16")
    fmt = FLOAT_FORMATS[dtype][0]
    folder = float_gguf_dir(source, sha256, dtype)
    problem = float_gguf_problem(folder, sha256)
    if problem is None:
        return folder / FILE_NAME
    existed = folder.exists()
    check_writable(folder.parent, f"cannot write a {fmt} copy of {source.name}")
    why = f" (the cached one is not usable: {problem})" if existed else ""
    print(
        f"specdecode: writing a {fmt} copy of {source.name} for llama.cpp{why} (once; cached in {folder})...",
        file=sys.stderr,
    )
    remove_path(folder)
    try:
        with atomic_folder(folder, keep_existing=lambda f: float_gguf_problem(f, sha256) is None) as tmp:
            tmp.mkdir(parents=True)
            write_float_gguf(source, tmp / FILE_NAME, dtype)
            out = tmp / FILE_NAME
            marker = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "specdecode_version": __version__,
                "source_name": source.name,
                "source_sha256": sha256,
                "weights": fmt,
                "size": out.stat().st_size,
                "sha256": sha256_file(out),
            }
            write_atomic(tmp / MARKER_NAME, json.dumps(marker, indent=1, sort_keys=True))
    except OSError as e:
        raise SpecDecodeError(
            f"could not write the {fmt} copy of '{source}' to {folder}: {one_line(e)} "
            "(set SPECDECODE_CACHE to a writable folder)"
        ) from None
    problem = float_gguf_problem(folder, sha256)
    if problem is not None:
        raise SpecDecodeError(
            f"the {fmt} copy just written to {folder} fails its check ({problem}); "
            "delete that folder and run again, or set SPECDECODE_CACHE to a folder on another disk"
        )
    return folder / FILE_NAME


def write_float_gguf(source: Path, dest: Path, dtype: torch.dtype) -> None:
    """Write GGUF ``source`` with every tensor dequantized to ``dtype`` (1-D ones F32) to ``dest``."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize, quantize

    fmt, file_type = FLOAT_FORMATS[dtype]
    try:
        reader = GGUFReader(source)
        arch = str(reader.fields["general.architecture"].contents())
    except Exception as e:
        raise SpecDecodeError(f"could not read GGUF file '{source}': {one_line(e)}") from None
    writer = GGUFWriter(dest, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the header and the architecture: the writer writes them
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = file_type if key == "general.file_type" else field.contents()
        writer.add_key_value(key, value, vtype, sub)
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type)  # float32, numpy's row-major shape
        if data.ndim == 1 or dtype == torch.float32:
            writer.add_tensor(t.name, np.ascontiguousarray(data, dtype=np.float32))
        elif dtype == torch.float16:
            writer.add_tensor(t.name, data.astype(np.float16))
        else:
            raw = quantize(np.ascontiguousarray(data, dtype=np.float32), GGMLQuantizationType.BF16)
            writer.add_tensor(t.name, raw, raw_dtype=GGMLQuantizationType.BF16)  # bytes: shape follows
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
