"""Keeping what transformers and the OS say short: transformers' logs and warnings off while
specdecode loads or builds a model, and any exception as one line for a SpecDecodeError."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers(progress: bool) -> Iterator[None]:
    """transformers at error level, its progress bars on only when ``progress``; warnings off.
    Its previous verbosity and progress-bar setting come back on exit."""
    from transformers.utils import logging as hf_logging

    old_verbosity = hf_logging.get_verbosity()
    old_progress = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if progress:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(old_verbosity)
        if old_progress:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


def one_line(e: BaseException) -> str:
    """``Type: message`` on one line (white space folded), at most about 300 characters."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
