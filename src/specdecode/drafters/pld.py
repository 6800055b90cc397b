"""``pld``: prompt lookup decoding.

Find the most recent earlier occurrence of the context's last n-gram (longest n first) and
propose the tokens that followed it. Drafts cost no model call; they pay off on tasks that
copy from the prompt (summarization, RAG, code editing). Idea: Saxena, "Prompt Lookup
Decoding" (2023).

The n-gram index is built incrementally: each committed token adds one n-gram per size, so a
proposal costs a dictionary look-up, not a scan of the context.
"""

from __future__ import annotations

from specdecode.drafters._acceptance import AcceptanceRates, judged_children
from specdecode.drafters.base import Candidates, Drafter
from specdecode.errors import SpecDecodeError
from specdecode.registry import Option, register
from specdecode.tree import DraftTree


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


@register(
    "pld",
    "prompt lookup: copy what followed the last n-gram's previous occurrence (no draft model)",
    options={
        "draft_len": Option(int, 10, "tokens proposed per step", lambda v: v >= 1, ">= 1"),
        "ngram_max": Option(int, 3, "longest n-gram matched", lambda v: v >= 1, ">= 1"),
        "ngram_min": Option(int, 1, "shortest n-gram matched", lambda v: v >= 1, ">= 1"),
        "adaptive": Option(
            bool, True, "cut drafts to the length the cost curve and acceptance so far pay for"
        ),
    },
)
class PromptLookup(Drafter):
    def __init__(
        self, ctx, draft_len: int = 10, ngram_max: int = 3, ngram_min: int = 1, adaptive: bool = True
    ) -> None:
        if ngram_min > ngram_max:
            raise SpecDecodeError(f"pld: ngram_min ({ngram_min}) must not exceed ngram_max ({ngram_max})")
        self.draft_len = draft_len
        self.index = NgramIndex(list(range(ngram_min, ngram_max + 1)))
        self.policy = None
        if adaptive:
            from specdecode.budget import policy_for

            self.policy = policy_for(ctx.target, max_nodes=draft_len)
            # P(draft token i accepted | token i - 1 accepted), per matched n-gram length
            self.rates = {n: AcceptanceRates([0.6] * draft_len, monotone=False) for n in self.index.sizes}
        self._matched = 0

    composable = True

    def begin(self, prompt_ids, sampling) -> None:
        self.index = NgramIndex(self.index.sizes)  # per generation (the rates are shared)

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        self.index.update(tokens)
        draft, matched = self.index.lookup(tokens, min(self.draft_len, max_depth))
        self._matched = matched
        probs, p = [], 1.0
        if draft and self.policy is not None:
            for r in self.rates[matched].rates[: len(draft)]:
                p *= r
                probs.append(p)
        else:
            probs = [1.0] * len(draft)
        tags = [(matched, i) for i in range(len(draft))]
        return Candidates(draft, list(range(-1, len(draft) - 1)), probs, tags)

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        c = self.candidates(tokens, max_depth)
        draft = c.tokens
        if draft and self.policy is not None:
            # at least one token, so that a poor estimate can still recover
            draft = draft[: max(1, self.policy.choose(c.probs))]
        return DraftTree.chain(draft)

    def observe(self, outcome) -> None:
        if len(outcome.tree):
            m = self._matched
            self.learn(
                outcome, [((m, i), ok) for i, ok in judged_children(outcome.tree, outcome.verdict.path)]
            )

    def learn(self, outcome, judged) -> None:
        # P(draft token i accepted | token i - 1 accepted), per matched n-gram length
        if self.policy is None:
            return
        by_match: dict[int, list[tuple[int, bool]]] = {}
        for (m, i), ok in judged:
            by_match.setdefault(m, []).append((i, ok))
        for m, outcomes in by_match.items():
            self.rates[m].update(outcomes)
