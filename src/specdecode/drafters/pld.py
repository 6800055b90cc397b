"""``pld``: prompt lookup decoding.

Find the most recent earlier occurrence of the context's last n-gram (longest n first) and
propose the tokens that followed it. Drafts cost no model call; they pay off on tasks that
copy from the prompt (summarization, RAG, code editing). Idea: Saxena, "Prompt Lookup
Decoding" (2023).

The n-gram index is built incrementally: each committed token adds one n-gram per size, so a
proposal costs a dictionary look-up, not a scan of the context.
"""

from __future__ import annotations

import itertools
import operator
from typing import Annotated

from specdecode.budget import policy_for
from specdecode.drafters._estimates import AcceptanceRates
from specdecode.drafters.base import CandidateDrafter, Candidates
from specdecode.errors import SpecDecodeError
from specdecode.registry import at_least, register


class NgramIndex:
    """For each n-gram size: n-gram -> the position right after its latest occurrence."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sorted(set(sizes), reverse=True)
        self.maps: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.indexed = 0  # n-grams ending before this position are indexed

    def update(self, tokens: list[int]) -> None:
        # Index n-grams whose continuation has begun: those ending at or before len - 1.
        end = len(tokens) - 1
        for e in range(max(self.indexed, 1), end + 1):
            for n, m in self.maps.items():
                if e >= n:
                    m[tuple(tokens[e - n : e])] = e
        self.indexed = max(self.indexed, end + 1)

    def lookup(self, tokens: list[int], length: int) -> tuple[list[int], int]:
        """The continuation of the latest earlier match of the longest matching suffix, and
        that suffix's length (0 when nothing matched)."""
        for n in self.sizes:
            if len(tokens) <= n:
                continue
            pos = self.maps[n].get(tuple(tokens[-n:]))
            if pos is not None:
                return tokens[pos : pos + length], n
        return [], 0


@register("pld", "prompt lookup: copy what followed the last n-gram's previous occurrence (no draft model)")
class PromptLookup(CandidateDrafter):
    replayable = True  # token-only proposals; begin() and candidates() touch per-generation state only

    def __init__(
        self,
        ctx,
        draft_len: Annotated[int, "tokens proposed per step", at_least(1)] = 10,
        ngram_max: Annotated[int, "longest n-gram matched", at_least(1)] = 3,
        ngram_min: Annotated[int, "shortest n-gram matched", at_least(1)] = 1,
        adaptive: Annotated[
            bool, "cut drafts to the length the cost curve and acceptance so far pay for"
        ] = True,
    ) -> None:
        if ngram_min > ngram_max:
            raise SpecDecodeError(f"pld: ngram_min ({ngram_min}) must not exceed ngram_max ({ngram_max})")
        self.draft_len = draft_len
        self.index = NgramIndex(list(range(ngram_min, ngram_max + 1)))
        self.policy = policy_for(ctx.target, max_nodes=draft_len) if adaptive else None
        # P(draft token i accepted | token i - 1 accepted), per matched n-gram length
        self.rates = {n: AcceptanceRates([0.6] * draft_len, monotone=False) for n in self.index.sizes}

    def begin(self, prompt_ids, sampling) -> None:
        self.index = NgramIndex(self.index.sizes)  # per generation (the rates are shared)

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        self.index.update(tokens)
        draft, matched = self.index.lookup(tokens, min(self.draft_len, max_depth))
        if self.policy is None or not draft:
            probs = [1.0] * len(draft)
        else:
            probs = list(itertools.accumulate(self.rates[matched].rates[: len(draft)], operator.mul))
        tags = [(matched, i) for i in range(len(draft))]
        return Candidates(draft, list(range(-1, len(draft) - 1)), probs, tags)

    def learn(self, outcome, judged) -> None:
        by_match: dict[int, list[tuple[int, bool]]] = {n: [] for n in self.rates}
        for (m, i), ok in judged:
            by_match[m].append((i, ok))
        for m, outcomes in by_match.items():
            self.rates[m].update(outcomes)
