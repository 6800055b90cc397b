"""Streaming detokenization: the text of a growing token list, decoding a short window per step.

Decoding the whole answer at every step costs O(n) a step, O(n^2) an answer. Instead, as vLLM
and mlx-lm do, decode only the tokens since the last emitted text together with a few tokens
before them (the *prefix* window): the new text is what decoding the window adds to decoding
its prefix alone. The prefix keeps what depends on the left context (SentencePiece's leading
spaces, byte-level BPE's multi-byte characters) exact, and a trailing U+FFFD (a character
whose bytes have not all arrived) is held back until it is complete.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    """Feed token ids with :meth:`add`; :attr:`text` is the text so far (special tokens skipped)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # ids[_prefix:_read] were decoded last time, for context only
        self._read = 0  # ids[:_read] are in text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, ids: list[int]) -> str:
        """Append ``ids``; returns the text they complete ("" while a character is unfinished)."""
        self.ids.extend(ids)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """The text of every id added, an unfinished character included (at the end of a stream)."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        delta = after[len(before) :] if after.startswith(before) else ""
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta
