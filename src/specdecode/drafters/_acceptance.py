"""Online acceptance estimates shared by the train-free tree drafters (``recycling``, ``aded``).

A tree drafter needs, for every candidate edge, the probability that the target accepts the
child given that it accepted the parent. :class:`AcceptanceRates` keeps that per *bucket* (the
child's rank in its row for ``recycling``, a bin of the draft model's own probability for
``aded``) from the verification outcomes, starting from a prior and forgetting slowly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from specdecode.tree import DraftTree


class AcceptanceRates:
    """``rates[b]``: estimated P(child accepted | parent accepted) for a child in bucket ``b``.

    Each rate is ``(accepted + w * prior) / (offered + w)`` over counts that decay by ``decay``
    per :meth:`update`, so without evidence a rate drifts back to its prior (a drafter that
    stopped drafting because its rates fell starts again). With ``monotone``, rates never
    increase with the bucket index within each block of ``block`` buckets (all buckets when
    None): bucket 0 of a block is its likeliest, which keeps best-first tree growth simple.
    """

    def __init__(
        self,
        prior: Sequence[float],
        weight: float = 20.0,
        decay: float = 0.995,
        monotone: bool = True,
        block: int | None = None,
    ) -> None:
        self.prior = [float(p) for p in prior]
        self.weight = float(weight)
        self.decay = float(decay)
        self.monotone = monotone
        self.block = block or len(self.prior)
        self.accepted = [0.0] * len(self.prior)
        self.offered = [0.0] * len(self.prior)
        self.rates: list[float] = []
        self._refresh()

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
