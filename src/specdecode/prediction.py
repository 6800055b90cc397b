"""Predicted Outputs: a per-request text the answer is expected to resemble, as a draft source.

An application editing code or a document knows most of the answer already (the old text).
Where the tokens committed so far match a place in the prediction, the chain that follows that
place in the prediction is drafted; the verifier keeps what the target agrees with, so the
output is exactly what decoding without a prediction gives. Where nothing matches, the
method's own drafter drafts.

Matching: the longest suffix of the committed tokens (up to ``MAX_NGRAM``) that occurs in the
prediction, preferring its first occurrence at or after the *cursor* (the prediction position
right after the last accepted predicted token), so an edit is followed in order. The chain's
length follows the latency curve (:class:`specdecode.budget.BudgetPolicy`) with this request's
own running acceptance estimate of predicted tokens.
"""

from __future__ import annotations

import bisect
import itertools
import operator

from specdecode.budget import policy_for
from specdecode.drafters._estimates import AcceptanceRates
from specdecode.drafters.base import StepOutcome
from specdecode.tree import DraftTree

MAX_NGRAM = 4


class Prediction:
    """The draft source of one request's prediction (never shared between requests)."""

    def __init__(self, prediction: list[int], loaded, *, max_len: int = 64) -> None:
        self.tokens = list(prediction)
        # n -> n-gram -> the prediction positions right after each occurrence, ascending
        self.grams: dict[int, dict[tuple[int, ...], list[int]]] = {n: {} for n in range(1, MAX_NGRAM + 1)}
        for n, table in self.grams.items():
            for end in range(n, len(self.tokens) + 1):
                table.setdefault(tuple(self.tokens[end - n : end]), []).append(end)
        self.policy = policy_for(loaded, max_nodes=max_len)
        # P(predicted token i accepted | token i - 1 accepted): trusted until shown wrong
        self.rate = AcceptanceRates(0.9, weight=4.0, decay=0.9, monotone=False)
        self.cursor = 0
        self.accepted = 0  # predicted tokens the target accepted in all
        self._start = 0  # where the last proposal began in the prediction

    def _match(self, tokens: list[int]) -> int | None:
        for n in range(min(MAX_NGRAM, len(tokens)), 0, -1):
            ends = self.grams[n].get(tuple(tokens[-n:]))
            if ends:
                i = bisect.bisect_left(ends, self.cursor)
                return ends[i] if i < len(ends) else ends[-1]
        return None

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        """A chain from the prediction below ``tokens[-1]``, empty when nothing matches."""
        start = self._match(tokens)
        if start is None or start >= len(self.tokens):
            return DraftTree.empty()
        chain = self.tokens[start : start + min(max_depth, self.policy.max_nodes)]
        probs = list(itertools.accumulate([self.rate.get("next")] * len(chain), operator.mul))
        n = self.policy.choose(probs, context=len(tokens) - 1)
        self._start = start
        return DraftTree.chain(chain[:n])

    def observe(self, outcome: StepOutcome) -> None:
        accepted, drafted = outcome.verdict.accepted, len(outcome.tree)
        for i in range(min(accepted + 1, drafted)):
            self.rate.record("next", i < accepted)
        self.accepted += accepted
        self.cursor = self._start + accepted

    @property
    def rejected(self) -> int:
        """Prediction tokens that did not become part of the answer (OpenAI's count)."""
        return max(0, len(self.tokens) - self.accepted)
