"""Where specdecode keeps what it computes once: converted models, calibration results.

Import-light on purpose (no torch): the CLI and the calibration code use it too.
"""

from __future__ import annotations

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
