"""A transformers ``LogitsProcessor`` that applies a :class:`Constraint`'s mask at every step of
``model.generate()`` (one sequence): the plain-decoding baseline of constrained generation.

llguidance ships mask helpers for torch but no transformers processor; this one keeps a
matcher, consumes the token generated since the last call, and sets every token the grammar
forbids to ``-inf``. Where nothing is allowed (a dead end) only EOS is left, so ``generate()``
stops.
"""

from __future__ import annotations

import numpy as np
import torch


class GrammarLogitsProcessor:
    """``LogitsProcessor`` for ``generate(logits_processor=[...])``, batch size 1."""

    def __init__(self, constraint, eos: set[int]) -> None:
        self.matcher = constraint.matcher()
        self.vocab = constraint.tokenizer.vocab_size
        self.eos = sorted(eos)
        self.not_eos = [t for t in constraint.tokenizer.eos_tokens if t not in eos]
        self.start: int | None = None  # the prompt's length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != 1:
            raise ValueError("GrammarLogitsProcessor handles one sequence at a time")
        if self.start is None:
            self.start = input_ids.shape[1]
        else:
            self.matcher.consume_token(int(input_ids[0, -1]))
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        width = scores.shape[-1]
        allowed = torch.zeros(width, dtype=torch.bool)
        n = min(width, self.vocab)
        allowed[:n] = torch.from_numpy(bits[:n].astype(bool))
        allowed[self.not_eos] = False
        if not allowed.any():
            allowed[self.eos] = True
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
