"""Files written so that nobody ever reads half of one: temporary siblings, atomic replacement,
write probes, content digests.

Every file or folder specdecode keeps (converted models, the default GGUF, latency curves,
bench results) is written to a temporary path beside its final one and moved there in one
step, so a reader sees the old version or the new one, never a mix. A temporary left by a
process that died is recognised by the process id in its name and removed by the next writer.

Import-light on purpose (no torch): the CLI, the cost model and the bench use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "atomic_file",
    "atomic_folder",
    "clean_stale_temps",
    "ensure_writable",
    "remove_path",
    "sha256_file",
    "temp_sibling",
    "write_atomic",
]


def temp_sibling(final: Path) -> Path:
    """A fresh temporary path beside ``final`` (same filesystem, so ``os.rename`` is atomic).

    Its name records this process's id so that :func:`clean_stale_temps` can tell a
    half-written leftover of a dead process from the work of a live one.
    """
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def clean_stale_temps(final: Path) -> None:
    """Delete temporaries made by :func:`temp_sibling` for ``final`` whose process is gone."""
    parent = final.parent
    if not parent.is_dir():
        return
    prefix = f".{final.name}.tmp-"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        try:
            pid = int(entry.name[len(prefix) :].split("-", 1)[0])
        except ValueError:
            pid = -1
        if pid > 0 and _pid_alive(pid):
            continue
        remove_path(entry)


def remove_path(path: Path) -> None:
    """Remove a file or folder if it exists; never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextlib.contextmanager
def _temporary_for(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final`` (its folder created, stale temporaries cleaned first),
    removed when the block ends, whatever happens."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)
    tmp = temp_sibling(final)
    try:
        yield tmp
    finally:
        remove_path(tmp)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` for the block to write a file at; when the
    block ends without an exception, move it onto ``final`` in one step (``os.replace``,
    which replaces an older file). The folder is created, temporaries that dead processes
    left for ``final`` are removed first, and this one is removed whatever happens."""
    with _temporary_for(final) as tmp:
        yield tmp
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_folder(final: Path, *, keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """As :func:`atomic_file`, for a folder the block creates at the yielded path.

    A folder cannot be renamed over a non-empty one: when ``final`` already exists (another
    process finished the same work first, or a broken copy is in the way), it is kept if
    ``keep_existing(final)`` says so, and the new folder dropped; else it is replaced."""
    with _temporary_for(final) as tmp:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if keep_existing is not None and keep_existing(final):
                return
            remove_path(final)
            os.rename(tmp, final)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_file`), synced to disk."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove it writable by writing and deleting a file in it.

    A real write, not ``os.access``: that says yes to root on a read-only mount, and no
    answer but a write is sure on network filesystems. Raises ``OSError`` when it fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    probe = temp_sibling(folder / "write-probe")
    try:
        with open(probe, "xb") as f:
            f.write(b"ok")
    finally:
        remove_path(probe)


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, *, remember: bool = False) -> str:
    """sha256 hex of a file's bytes, read now; with ``remember``, a digest this process
    computed before for the same path, size and modification time is reused."""
    if remember:
        p = Path(path).resolve()
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        if key not in _SHA_MEMO:
            _SHA_MEMO[key] = sha256_file(p)
        return _SHA_MEMO[key]
    h = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_marker(folder: Path, name: str, fmt: tuple[str, int]) -> tuple[dict, None] | tuple[None, str]:
    """A cache folder's completion marker (JSON file ``name``), parsed, when it has this
    ``(format, format_version)``: ``(data, None)``; else ``(None, why it cannot be trusted)``."""
    import json

    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "it has no completion marker" if folder.is_dir() else "it does not exist"
    except (OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"its marker is unreadable ({why})"
    if not isinstance(data, dict) or (data.get("format"), data.get("format_version")) != tuple(fmt):
        return None, "its marker is of another format"
    return data, None
