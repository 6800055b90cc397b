"""Where specdecode keeps what it computes once: converted models, calibration results.

The file primitives the cache is written with (temporary siblings, atomic replacement, write
probes) are in :mod:`specdecode.files`.
"""

from __future__ import annotations

import os
from pathlib import Path

from specdecode.errors import SpecDecodeError
from specdecode.files import ensure_writable
from specdecode.models.quiet import one_line


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


def check_writable(folder: Path, doing: str) -> None:
    """Raise a one-line SpecDecodeError starting with ``doing`` when the cache folder ``folder``
    cannot be written (:func:`specdecode.files.ensure_writable`): called before slow work
    whose result would have to be written there."""
    try:
        ensure_writable(folder)
    except OSError as e:
        raise SpecDecodeError(
            f"{doing}: the cache folder {folder} is not writable ({one_line(e)}); "
            "make it writable or set SPECDECODE_CACHE to a writable folder"
        ) from None
