"""Learned drafter state kept in a safetensors file (recycling's matrix, suffix's memory).

Written atomically (a reader never sees half a file) and read back only after the checks that
make it trustworthy: the format and its version, the model it was learned for, the vocabulary.
A drafter mixes in :class:`PersistentState` and writes three things: what to save
(:meth:`PersistentState._tensors`), how to check what was read (:meth:`PersistentState._decode`)
and how to take it in (:meth:`PersistentState._apply`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_file


class PersistentState:
    """Save, autosave and load for a drafter's learned state.

    The class sets ``FILE_FORMAT``, ``FILE_VERSION``, ``LABEL`` (the method's name, first in
    every message), ``WHAT`` (what the file holds, e.g. "matrix"), ``KIND`` (its full name, in
    the message for a file of another kind), ``REQUIRED`` (tensor names
    a file must have), ``PATH_OPTION`` (the option that names the file) and ``EMPTY`` (what a
    drafter starts from when a cached file is unusable); an instance has ``path``,
    ``model_key`` and ``vocab``.
    """

    FILE_FORMAT: str
    FILE_VERSION: str
    LABEL: str
    WHAT: str
    KIND: str
    REQUIRED: frozenset[str]
    PATH_OPTION: str
    EMPTY: str
    path: Path | None
    model_key: str
    vocab: int

    # ---- what a drafter writes --------------------------------------------------------------
    def _tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors to save and any metadata beyond format, version, model and vocabulary."""
        raise NotImplementedError

    def _decode(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], bad):
        """Check what was read (``bad(why)`` makes the error to raise) and return the state."""
        raise NotImplementedError

    def _apply(self, state) -> None:
        """Replace the learned state with ``state`` (what :meth:`_decode` returned)."""
        raise NotImplementedError

    def _saved(self) -> None:
        """Called after every successful save."""

    # ---- shared ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the learned state to ``path`` (default: the drafter's file) as safetensors,
        atomically; returns the path."""
        from safetensors.torch import save_file

        target = Path(path).expanduser() if path is not None else self.path
        if target is None:
            raise SpecDecodeError(
                f"{self.LABEL}: no file to save the {self.WHAT} to: give a path or {self.PATH_OPTION}=PATH"
            )
        tensors, extra = self._tensors()
        metadata = {
            "format": self.FILE_FORMAT,
            "version": self.FILE_VERSION,
            "model_key": self.model_key,
            "vocab_size": str(self.vocab),
            **extra,
        }
        try:
            with atomic_file(target) as tmp:
                save_file(tensors, str(tmp), metadata=metadata)
        except OSError as e:
            raise SpecDecodeError(f"{self.LABEL}: cannot save the {self.WHAT} to {target}: {e}") from None
        self._saved()
        return target

    def _autosave(self) -> None:
        try:
            self.save()
        except SpecDecodeError as e:
            warnings.warn(f"{e}; keeping it in memory only", stacklevel=3)
            self.path = None

    def load(self, path: str | os.PathLike, *, strict: bool = True) -> bool:
        """Replace the learned state with the one saved in ``path``. A file that is unreadable,
        damaged, or made for another model or vocabulary raises :class:`SpecDecodeError` when
        ``strict``, else is ignored with a warning (returns False)."""
        path = Path(path).expanduser()
        try:
            state = self._read(path)
        except SpecDecodeError as e:
            if strict:
                raise
            warnings.warn(f"{e}; starting from {self.EMPTY}", stacklevel=2)
            return False
        self._apply(state)
        return True

    def _read(self, path: Path):
        from safetensors import SafetensorError, safe_open

        def bad(why: str) -> SpecDecodeError:
            return SpecDecodeError(f"{self.LABEL}: {path} is not a usable {self.WHAT} file: {why}")

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
                if meta.get("format") != self.FILE_FORMAT or not self.REQUIRED <= keys:
                    raise bad(f"not a {self.KIND}")
                if meta.get("version") != self.FILE_VERSION:
                    raise bad(f"format version {meta.get('version')!r}, expected {self.FILE_VERSION}")
                if meta.get("model_key") != self.model_key:
                    raise bad(f"it was saved for model {meta.get('model_key')!r}, this is {self.model_key!r}")
                if meta.get("vocab_size") != str(self.vocab):
                    raise bad(f"vocabulary {meta.get('vocab_size')}, expected {self.vocab}")
                tensors = {k: f.get_tensor(k) for k in keys}
        except SpecDecodeError:
            raise
        except (OSError, SafetensorError, ValueError, RuntimeError) as e:
            raise bad(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        return self._decode(tensors, meta, bad)
