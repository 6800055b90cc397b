"""Acceptance estimates and tree helpers shared by the drafters that learn what the target accepts.

A drafter that ranks candidate nodes needs, for each, the probability that the target accepts
it given that it accepted its parent. :class:`AcceptanceRates` keeps that per *key* (a child's
rank in its row for ``recycling``, a bin of the tri-gram probability for ``aded``, the matched
n-gram length and depth for ``pld``, source and depth for ``lookahead``, depth for ``sjd``) from
verification outcomes: a Beta prior plus counts that decay, so the estimate follows the text.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

from specdecode.tree import DraftTree


class AcceptanceRates:
    """Estimated P(child accepted | parent accepted), per key: a decayed Beta estimate.

    The estimate for key ``k`` is ``(accepted[k] + weight * prior[k]) / (offered[k] + weight)``.
    Two kinds of keys:

    - *buckets* ``0 .. n - 1`` (``prior`` a sequence): :attr:`rates` is the list of estimates,
      read in hot loops. :meth:`update` takes one verification's ``(bucket, accepted)`` pairs;
      every bucket's counts decay by ``decay`` first, so without evidence a rate drifts back to
      its prior (a drafter that stopped drafting because its rates fell starts again). With
      ``monotone``, rates never increase with the bucket index within each block of ``block``
      buckets (all buckets when None), which keeps best-first tree growth simple.
    - *any hashable keys* (``prior`` a number, the same for every key): :meth:`get` reads one,
      :meth:`record` adds one trial, decaying that key's counts only. ``hit`` may be the
      acceptance probability itself where it is known exactly.
    """

    def __init__(
        self,
        prior: Sequence[float] | float,
        weight: float = 20.0,
        decay: float = 0.995,
        monotone: bool = True,
        block: int | None = None,
    ) -> None:
        self.weight = float(weight)
        self.decay = float(decay)
        self.monotone = monotone
        if isinstance(prior, (int, float)):
            self.default = float(prior)
            self.prior: list[float] = []
        else:
            self.default = 0.0
            self.prior = [float(p) for p in prior]
        self.block = block or len(self.prior)
        self.accepted = [0.0] * len(self.prior)
        self.offered = [0.0] * len(self.prior)
        self.hits: dict[Hashable, float] = {}
        self.trials: dict[Hashable, float] = {}
        self.rates: list[float] = []
        self._refresh()

    # ---- buckets ----------------------------------------------------------------------------
    def update(self, outcomes: Sequence[tuple[int, bool]]) -> None:
        """Record one verification: ``(bucket, accepted)`` for each child of an accepted node."""
        d = self.decay
        acc, off = self.accepted, self.offered
        for b in range(len(acc)):
            acc[b] *= d
            off[b] *= d
        for b, ok in outcomes:
            off[b] += 1.0
            if ok:
                acc[b] += 1.0
        self._refresh()

    def _refresh(self) -> None:
        w = self.weight
        rates = [
            (a + w * p) / (o + w) for a, o, p in zip(self.accepted, self.offered, self.prior, strict=True)
        ]
        if self.monotone:
            for b in range(1, len(rates)):
                if b % self.block:
                    rates[b] = min(rates[b], rates[b - 1])
        self.rates = [min(max(r, 1e-6), 1.0) for r in rates]

    def state(self) -> tuple[list[float], list[float]]:
        return list(self.accepted), list(self.offered)

    def set_state(self, accepted: Sequence[float], offered: Sequence[float]) -> None:
        n = len(self.prior)
        acc = [max(float(a), 0.0) for a in list(accepted)[:n]]
        off = [max(float(o), 0.0) for o in list(offered)[:n]]
        acc += [0.0] * (n - len(acc))
        off += [0.0] * (n - len(off))
        self.accepted = [min(a, o) for a, o in zip(acc, off, strict=True)]
        self.offered = off
        self._refresh()

    # ---- any keys ---------------------------------------------------------------------------
    def get(self, key: Hashable) -> float:
        hits, trials = self.hits.get(key, 0.0), self.trials.get(key, 0.0)
        return (hits + self.default * self.weight) / (trials + self.weight)

    def record(self, key: Hashable, hit: float) -> None:
        """One trial of ``key``; ``hit`` is 1 or 0, or the acceptance probability."""
        self.hits[key] = self.hits.get(key, 0.0) * self.decay + float(hit)
        self.trials[key] = self.trials.get(key, 0.0) * self.decay + 1.0


def edge_stats() -> AcceptanceRates:
    """The estimates of the Jacobi drafters (``lookahead``, ``sjd``): prior 0.2 worth 4 trials,
    decaying by 0.98 per trial of a key."""
    return AcceptanceRates(0.2, weight=4.0, decay=0.98, monotone=False)


def judged_children(tree: DraftTree, path: list[int]) -> Iterator[tuple[int, bool]]:
    """``(node, accepted)`` for every node whose parent the target accepted (the root included):
    exactly the nodes the verifier judged, each once."""
    on_path = set(path)
    for parent in [-1, *path]:
        for child in tree.children(parent):
            yield child, child in on_path


def sort_by_probability(
    tokens: list[int], parents: list[int], probs: list[float]
) -> tuple[list[int], list[int], list[float], list[int]]:
    """Reorder nodes by descending probability (stable), remapping parents; returns the new
    tokens, parents, probabilities and the old index of each new node. A valid tree stays
    valid as long as no child is likelier than its parent."""
    order = sorted(range(len(tokens)), key=lambda i: -probs[i])
    new_index = {old: new for new, old in enumerate(order)}
    new_parents = [-1 if parents[i] < 0 else new_index[parents[i]] for i in order]
    return [tokens[i] for i in order], new_parents, [probs[i] for i in order], order
