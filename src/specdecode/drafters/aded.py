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

Measured (SmolLM2-135M, float32, 2-core AMD EPYC, 2 threads, ``specdecode bench --dataset
spec-bench --n-per-category 10 --max-new-tokens 256``, greedy; benchmarks/cpu-2core-smollm2-135m):
1.64x hf-ar, 2.44 tokens per forward, output identical to ``ar`` on all 60 prompts.
"""

from __future__ import annotations

import math
import time

from specdecode.budget import BUDGET_OPTIONS, policy_for
from specdecode.drafters._acceptance import AcceptanceRates, judged_children, sort_by_probability
from specdecode.drafters.base import Candidates, Drafter, StepOutcome
from specdecode.registry import Option, register
from specdecode.tree import DraftTree

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


@register(
    "aded",
    "ADED: adaptive tri-gram statistics of the target's outputs, drafts by Monte Carlo tree search",
    options={
        **BUDGET_OPTIONS,
        "max_depth": Option(int, 10, "deepest draft node", lambda v: v >= 1, ">= 1"),
        "top": Option(int, 8, "candidate next tokens per context", lambda v: v >= 1, ">= 1"),
        "keep": Option(int, 16, "entries kept per tri-gram context", lambda v: v >= 1, ">= 1"),
        "decay": Option(
            float,
            0.999,
            "per-step weight decay of old statistics (1: none)",
            lambda v: 0 < v <= 1,
            "in (0, 1]",
        ),
        "explore": Option(float, 0.5, "exploration constant of the tree search", lambda v: v >= 0, ">= 0"),
        "side_weight": Option(
            float, 0.5, "weight of the target's top-1 after rejected nodes", lambda v: v >= 0, ">= 0"
        ),
    },
)
class AdaptiveDraftVerification(Drafter):
    def __init__(
        self,
        ctx,
        budget: int = 0,
        max_nodes: int = 64,
        max_depth: int = 10,
        top: int = 8,
        keep: int = 16,
        decay: float = 0.999,
        explore: float = 0.5,
        side_weight: float = 0.5,
    ) -> None:
        self.model = TrigramModel(keep=keep, decay=decay)
        self.rates = AcceptanceRates(PRIOR_TRIGRAM + PRIOR_BIGRAM, monotone=False)
        self.budget = budget
        self.max_nodes = budget or max_nodes
        self.max_depth = max_depth
        self.top = top
        self.explore = explore
        self.side_weight = side_weight
        self.policy = None if budget else policy_for(ctx.target, max_nodes=max_nodes)
        self._learned = 0  # tokens[:_learned] are in the statistics
        self._buckets: list[int] = []  # bucket of each node of the last proposal
        self._last_n = 8
        self._sim_cost = 0.0  # seconds per simulation (running average)
        self._row_cost = 0.0  # seconds of observe() per scored row (running average)
        self.expected_accepted = 0.0  # sum of the last tree's node probabilities

    # ---- the drafter contract -------------------------------------------------------------
    def begin(self, prompt_ids, sampling) -> None:
        self._learned = 0
        self._learn(list(prompt_ids))

    def _learn(self, tokens: list[int]) -> None:
        add = self.model.add
        for i in range(max(self._learned, 2), len(tokens)):
            add(tokens[i - 2], tokens[i - 1], tokens[i])
        self._learned = max(self._learned, len(tokens))

    composable = True

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        self._learn(tokens)
        if len(tokens) < 2:
            return Candidates([], [], [], [])
        start = time.perf_counter()
        sims = self.max_nodes if self.policy is None else min(self.max_nodes, 2 * self._last_n + 8)
        out, parents, probs, buckets = self._search(
            tokens[-2], tokens[-1], min(self.max_depth, max_depth), sims
        )
        out, parents, probs, order = sort_by_probability(out, parents, probs)
        buckets = [buckets[i] for i in order]
        if sims:
            elapsed = time.perf_counter() - start
            self._sim_cost = 0.9 * self._sim_cost + 0.1 * elapsed / sims
        # Per scored node: about two simulations of search and the node's share of observe().
        return Candidates(out, parents, probs, buckets, 2 * self._sim_cost + self._row_cost)

    def chosen(self, n: int) -> None:
        self._last_n = n

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        c = self.candidates(tokens, max_depth)
        out, parents, probs, buckets = c.tokens, c.parents, c.probs, c.tags
        if self.policy is not None:
            n = self.policy.choose(probs, draft_cost_per_node=c.cost_per_node)
            del out[n:], parents[n:], buckets[n:]
            self.chosen(n)
        self._buckets = buckets
        self.expected_accepted = sum(probs[: len(buckets)])  # the estimate the tree was sized by
        return DraftTree(out, parents)

    def _search(self, a: int, b: int, depth_cap: int, sims: int):
        """Monte Carlo tree search: each simulation adds one node. Index 0 is the root."""
        model, top, rates, c_explore = self.model, self.top, self.rates.rates, self.explore
        # Per node: token, parent, context token before it, path probability, depth,
        # visits, total value, candidates [(token, edge rate, bucket)], expanded children.
        tok = [b]
        before = [a]
        parent = [-1]
        prob = [1.0]
        depth = [0]
        visits = [0]
        value = [0.0]
        cands: list[list[tuple[int, float, int]] | None] = [None]
        kids: list[dict[int, int]] = [{}]
        closed = [False]  # nothing left to add below this node
        bucket = [-1]  # the acceptance bucket of the edge into each node
        tries = 0
        while len(tok) - 1 < sims and not closed[0] and tries < 4 * sims + 8:
            tries += 1
            s = 0
            while True:
                if cands[s] is None:
                    found, seen = model.candidates(before[s], tok[s], top)
                    cands[s] = [(c, rates[bk], bk) for c, p in found for bk in (_bucket(p, seen),)]
                best, best_score = -1, -1.0
                bonus = c_explore * math.sqrt(visits[s] + 1)
                for i, (_, rate, _) in enumerate(cands[s]):
                    child = kids[s].get(i)
                    if child is None:
                        score = prob[s] * rate + bonus * rate
                    elif closed[child]:
                        continue
                    else:
                        score = value[child] / visits[child] + bonus * rate / (1 + visits[child])
                    if score > best_score:
                        best, best_score = i, score
                if best < 0:
                    closed[s] = True
                    break
                child = kids[s].get(best)
                if child is not None:
                    s = child
                    continue
                c, rate, bk = cands[s][best]
                node = len(tok)
                tok.append(c)
                before.append(tok[s])
                parent.append(s)
                prob.append(prob[s] * rate)
                depth.append(depth[s] + 1)
                visits.append(0)
                value.append(0.0)
                cands.append(None if depth[s] + 1 < depth_cap else [])
                kids.append({})
                closed.append(depth[s] + 1 >= depth_cap)
                kids[s][best] = node
                bucket.append(bk)
                # back up the new node's value along its path
                v, u = prob[node], node
                while u >= 0:
                    visits[u] += 1
                    value[u] += v
                    u = parent[u]
                break
        # node i (1..) becomes draft node i - 1
        n = len(tok) - 1
        out = tok[1:]
        parents = [parent[i] - 1 for i in range(1, n + 1)]
        probs = prob[1:]
        return out, parents, probs, bucket[1:]

    def observe(self, outcome: StepOutcome) -> None:
        bk = self._buckets if len(self._buckets) == len(outcome.tree) else None
        judged = judged_children(outcome.tree, outcome.verdict.path)
        self.learn(outcome, [(bk[c], ok) for c, ok in judged] if bk else [])

    def learn(self, outcome: StepOutcome, judged) -> None:
        start = time.perf_counter()
        tree, logits, verdict = outcome.tree, outcome.logits, outcome.verdict
        model = self.model
        self._learn(outcome.tokens)
        if len(tree):
            if self.side_weight > 0:
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
