"""Where specdecode keeps what it computes once: converted models, calibration results.

Import-light on purpose (no torch): the CLI and the calibration code use it too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """The root of specdecode's on-disk cache, read from the environment at each call.

    ``$SPECDECODE_CACHE`` if set, else ``$XDG_CACHE_HOME/specdecode``, else
    ``~/.cache/specdecode``. The folder is not created here: writers create what they need.
    """
    env = os.environ.get("SPECDECODE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "specdecode"
    return Path.home() / ".cache" / "specdecode"


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read now (no memo): about 1 GB/s with SHA-NI."""
    h = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


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


def temp_sibling(final: Path) -> Path:
    """A fresh temporary path beside ``final`` (same filesystem, so ``os.rename`` is atomic).

    Its name records this process's id so that :func:`clean_stale_temps` can tell a
    half-written leftover of a dead process from the work of a live one.
    """
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


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
