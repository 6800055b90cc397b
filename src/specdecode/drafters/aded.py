"""``aded``: Adaptive Draft-Verification (Liu et al. 2024, "Adaptive Draft-Verification for
Efficient Large Language Model Decoding", ADED).

Two parts, as in the paper:

- A *tri-gram matrix* approximating the target's next-token distribution: weighted counts
  ``(a, b) -> c`` with a bigram ``b -> c`` back-off, kept sparse (a dict per context, pruned to
  the heaviest ``keep`` entries; the paper prunes its corpus to the top 12). It learns from the
  target as decoding goes: every committed token, and the target's top-1 after every scored
  draft node the verifier did not take (rejected drafts still show what the target would say
  in that context). Newer evidence weighs more (exponential recency, ``decay`` per step), so
  the statistics adapt to the text being written. They persist across the prompts of a
  decoder and are seeded from each prompt.
- A draft search that balances exploration and exploitation: a Monte Carlo tree search over
  continuations where each simulation descends by a PUCT score (estimated value plus an
  exploration bonus from the edge's prior and the visit counts) and adds one node. A node's
  value is its estimated acceptance probability: the product, along its path, of per-edge
  acceptance rates learned from verification outcomes (bucketed by the tri-gram probability).

The nodes found are ranked by that probability and :class:`specdecode.budget.BudgetPolicy`
decides from the measured latency curve how many are worth scoring. The paper builds its
tri-gram matrix from a large corpus; here it starts empty and learns from the prompts and the
model's own outputs only (no corpus file).

Measured figures: benchmarks/README.md.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from specdecode.budget import Budget, MaxNodes, policy_for
from specdecode.drafters._estimates import AcceptanceRates, sort_by_probability
from specdecode.drafters.base import CandidateDrafter, Candidates, StepOutcome
from specdecode.registry import at_least, in_range, register

# Buckets of an edge's tri-gram probability p (lower bounds); a second set for edges whose
# context (a, b) was never seen, where only the bigram b -> c speaks.
P_BINS = (0.8, 0.6, 0.4, 0.25, 0.12, 0.05, 0.0)
# Acceptance rates per bucket before any evidence, as measured on SmolLM2-135M (six Spec-Bench
# prompts, greedy, 16-node trees): a seen tri-gram context is a much better guide than a bigram.
PRIOR_TRIGRAM = (0.85, 0.7, 0.5, 0.25, 0.1, 0.07, 0.02)
PRIOR_BIGRAM = (0.4, 0.35, 0.15, 0.13, 0.1, 0.035, 0.01)


class TrigramModel:
    """Sparse, recency-weighted counts of ``(a, b) -> c`` and ``b -> c``.

    Recency without touching old entries: each new observation weighs ``inc``, and ``inc``
    grows by ``1 / decay`` per :meth:`tick`; everything is rescaled when it grows large.
    """

    def __init__(self, keep: int = 16, decay: float = 0.999, backoff: float = 1.0) -> None:
        self.keep = keep
        self.decay = decay
        self.backoff = backoff  # pseudo-count of the bigram in a tri-gram context
        self.tri: dict[tuple[int, int], dict[int, float]] = {}
        self.bi: dict[int, dict[int, float]] = {}
        self.inc = 1.0

    def add(self, a: int, b: int, c: int, weight: float = 1.0) -> None:
        w = self.inc * weight
        self._bump(self.tri, (a, b), c, w)
        self._bump(self.bi, b, c, w)

    def _bump(self, table: dict, key, c: int, w: float) -> None:
        row = table.get(key)
        if row is None:
            table[key] = {c: w}
            return
        row[c] = row.get(c, 0.0) + w
        if len(row) > self.keep:
            del row[min(row, key=row.__getitem__)]

    def tick(self) -> None:
        self.inc /= self.decay
        if self.inc > 1e12:
            scale = 1.0 / self.inc
            for table in (self.tri, self.bi):
                for key in list(table):
                    row = {c: w * scale for c, w in table[key].items() if w * scale > 1e-9}
                    if row:
                        table[key] = row
                    else:
                        del table[key]
            self.inc = 1.0

    def candidates(self, a: int, b: int, top: int) -> tuple[list[tuple[int, float]], bool]:
        """The ``top`` likeliest next tokens after ``a b`` with their probabilities, and whether
        the tri-gram context was seen (else the bigram alone)."""
        tri = self.tri.get((a, b))
        bi = self.bi.get(b)
        if not bi:
            return [], False
        bi_total = sum(bi.values())
        if tri:
            tri_total = sum(tri.values())
            beta = self.backoff * self.inc  # the bigram as `backoff` recent observations
            denom = tri_total + beta
            probs = {c: beta * w / bi_total / denom for c, w in bi.items()}
            for c, w in tri.items():
                probs[c] = probs.get(c, 0.0) + w / denom
        else:
            probs = {c: w / bi_total for c, w in bi.items()}
        best = sorted(probs.items(), key=lambda cw: -cw[1])[:top]
        return best, bool(tri)


def _bucket(p: float, seen: bool) -> int:
    for i, lo in enumerate(P_BINS):
        if p >= lo:
            return i if seen else i + len(P_BINS)
    return len(P_BINS) - 1 if seen else 2 * len(P_BINS) - 1


class _Node:
    """A node of the draft search: the edge into it and its search statistics."""

    __slots__ = (
        "token",
        "before",
        "parent",
        "prob",
        "depth",
        "bucket",
        "visits",
        "value",
        "cands",
        "kids",
        "closed",
    )

    def __init__(self, token: int, before: int, parent: int, prob: float, depth: int, bucket: int) -> None:
        self.token, self.before, self.parent = token, before, parent  # `before`: the token two back
        self.prob, self.depth, self.bucket = prob, depth, bucket  # path probability; edge's bucket
        self.visits, self.value = 0, 0.0
        self.cands: list[tuple[int, float, int]] | None = None  # (token, edge rate, bucket)
        self.kids: dict[int, int] = {}  # candidate index -> node index
        self.closed = False  # nothing left to add below this node


@register(
    "aded",
    "ADED: adaptive tri-gram statistics of the target's outputs, drafts by Monte Carlo tree search",
)
class AdaptiveDraftVerification(CandidateDrafter):
    def __init__(
        self,
        ctx,
        budget: Budget = 0,
        max_nodes: MaxNodes = 64,
        max_depth: Annotated[int, "deepest draft node", at_least(1)] = 10,
        top: Annotated[int, "candidate next tokens per context", at_least(1)] = 8,
        keep: Annotated[int, "entries kept per tri-gram context", at_least(1)] = 16,
        decay: Annotated[
            float, "per-step weight decay of old statistics (1: none)", in_range(0, 1, low_open=True)
        ] = 0.999,
        explore: Annotated[float, "exploration constant of the tree search", at_least(0)] = 0.5,
        side_weight: Annotated[float, "weight of the target's top-1 after rejected nodes", at_least(0)] = 0.5,
    ) -> None:
        self.model = TrigramModel(keep=keep, decay=decay)
        self.rates = AcceptanceRates(PRIOR_TRIGRAM + PRIOR_BIGRAM, monotone=False)
        self.max_nodes = budget or max_nodes
        self.max_depth = max_depth
        self.top = top
        self.explore = explore
        self.side_weight = side_weight
        self.policy = None if budget else policy_for(ctx.target, max_nodes=max_nodes)
        self._learned = 0  # tokens[:_learned] are in the statistics
        self._last_n = 8
        self._sim_cost = 0.0  # seconds per simulation (running average)
        self._row_cost = 0.0  # seconds of learn() per scored row (running average)

    # ---- the drafter contract -------------------------------------------------------------
    def begin(self, prompt_ids, sampling) -> None:
        self._learned = 0
        self._learn(list(prompt_ids))

    def _learn(self, tokens: list[int]) -> None:
        add = self.model.add
        for i in range(max(self._learned, 2), len(tokens)):
            add(tokens[i - 2], tokens[i - 1], tokens[i])
        self._learned = max(self._learned, len(tokens))

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        self._learn(tokens)
        if len(tokens) < 2:
            return Candidates([], [], [], [])
        start = time.perf_counter()
        sims = self.max_nodes if self.policy is None else min(self.max_nodes, 2 * self._last_n + 8)
        nodes = self._search(tokens[-2], tokens[-1], min(self.max_depth, max_depth), sims)[1:]
        # node i (1..) becomes draft node i - 1
        out, parents, probs, order = sort_by_probability(
            [n.token for n in nodes], [n.parent - 1 for n in nodes], [n.prob for n in nodes]
        )
        buckets = [nodes[i].bucket for i in order]
        if sims:
            elapsed = time.perf_counter() - start
            self._sim_cost = 0.9 * self._sim_cost + 0.1 * elapsed / sims
        # Per scored node: about two simulations of search and the node's share of learn().
        return Candidates(out, parents, probs, buckets, 2 * self._sim_cost + self._row_cost)

    def chosen(self, n: int) -> None:
        self._last_n = n

    def _search(self, a: int, b: int, depth_cap: int, sims: int) -> list[_Node]:
        """Monte Carlo tree search: each simulation adds one node. Index 0 is the root."""
        nodes = [_Node(b, a, -1, 1.0, 0, -1)]
        tries = 0
        while len(nodes) - 1 < sims and not nodes[0].closed and tries < 4 * sims + 8:
            tries += 1
            s = 0
            while True:
                best = self._select(nodes, s)
                if best < 0:
                    nodes[s].closed = True
                    break
                child = nodes[s].kids.get(best)
                if child is None:
                    self._expand(nodes, s, best, depth_cap)
                    break
                s = child
        return nodes

    def _select(self, nodes: list[_Node], s: int) -> int:
        """The candidate of node ``s`` with the best PUCT score (-1: all closed)."""
        node = nodes[s]
        if node.cands is None:
            found, seen = self.model.candidates(node.before, node.token, self.top)
            rates = self.rates.rates
            node.cands = [(c, rates[bk], bk) for c, p in found for bk in (_bucket(p, seen),)]
        best, best_score = -1, -1.0
        bonus = self.explore * math.sqrt(node.visits + 1)
        for i, (_, rate, _) in enumerate(node.cands):
            child = node.kids.get(i)
            if child is None:
                score = node.prob * rate + bonus * rate
            elif nodes[child].closed:
                continue
            else:
                kid = nodes[child]
                score = kid.value / kid.visits + bonus * rate / (1 + kid.visits)
            if score > best_score:
                best, best_score = i, score
        return best

    def _expand(self, nodes: list[_Node], s: int, i: int, depth_cap: int) -> None:
        """Add candidate ``i`` of node ``s`` and back its value up along its path."""
        parent = nodes[s]
        c, rate, bk = parent.cands[i]
        node = _Node(c, parent.token, s, parent.prob * rate, parent.depth + 1, bk)
        if node.depth >= depth_cap:
            node.cands, node.closed = [], True
        parent.kids[i] = len(nodes)
        nodes.append(node)
        u = len(nodes) - 1
        while u >= 0:
            nodes[u].visits += 1
            nodes[u].value += node.prob
            u = nodes[u].parent

    def learn(self, outcome: StepOutcome, judged) -> None:
        start = time.perf_counter()
        tree, logits, verdict = outcome.tree, outcome.logits, outcome.verdict
        model = self.model
        self._learn(outcome.tokens)
        if len(tree) and self.side_weight > 0:
            best = logits.argmax(-1).tolist()  # [n + 1]
            root = outcome.tokens[-len(verdict.tokens) - 1]
            on_path = set(verdict.path)
            toks, pars = tree.tokens, tree.parents
            for i, t in enumerate(toks):
                if i not in on_path:
                    p = pars[i]
                    model.add(root if p < 0 else toks[p], t, best[i + 1], self.side_weight)
        # Counts decay every step, drafted or not, so rates that fell too low to draft recover.
        self.rates.update(judged)
        model.tick()
        if len(tree):
            self._row_cost = 0.9 * self._row_cost + 0.1 * (time.perf_counter() - start) / len(tree)
