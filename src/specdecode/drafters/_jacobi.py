"""Shared by the Jacobi drafters (``lookahead``, ``sjd``): acceptance estimates and draft sizing.

Not a method (the leading underscore keeps the package from registering it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


class EdgeStats:
    """Running estimates of ``P(node accepted | its parent accepted)``, one per key.

    A Beta prior (mean ``prior``, weight ``strength`` pseudo-trials) plus exponentially
    decayed counts, so the estimate follows the text as it changes. Keys are whatever tells
    nodes apart for the drafter, e.g. ``("jacobi", depth)``.
    """

    def __init__(self, prior: float = 0.2, strength: float = 4.0, decay: float = 0.98) -> None:
        self.prior, self.strength, self.decay = prior, strength, decay
        self.hits: dict[Hashable, float] = {}
        self.trials: dict[Hashable, float] = {}

    def get(self, key: Hashable) -> float:
        hits, trials = self.hits.get(key, 0.0), self.trials.get(key, 0.0)
        return (hits + self.prior * self.strength) / (trials + self.strength)

    def update(self, key: Hashable, hit: float) -> None:
        """One trial; ``hit`` is 1 or 0, or the acceptance probability where it is known exactly."""
        self.hits[key] = self.hits.get(key, 0.0) * self.decay + float(hit)
        self.trials[key] = self.trials.get(key, 0.0) * self.decay + 1.0


def budget_policy(loaded):
    """The shared :class:`specdecode.budget.BudgetPolicy` for ``loaded``: its cached latency
    curve, or a CPU-like fallback when none is cached (never measures one)."""
    from specdecode.budget import policy_for

    return policy_for(loaded)


def choose_nodes(policy, budget: int, probs_desc: Sequence[float]) -> int:
    """How many of the best candidates (``probs_desc``, descending) to score.

    ``budget > 0`` is a fixed cap; ``0`` asks ``policy`` (which may answer 0: plain decoding
    this step). Drafters keep their estimates alive without scoring, by checking unscored
    guesses against the tokens committed later.
    """
    n = budget if budget > 0 else policy.choose(probs_desc)
    return min(n, len(probs_desc))
