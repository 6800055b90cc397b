"""How many draft tokens to score: one policy for every tree drafter, sized by measured cost.

A tree drafter ranks its candidate nodes by the estimated probability that the target accepts
them (the product of per-edge acceptance estimates along the node's path) and asks
:class:`BudgetPolicy` how many of the best to send. Scoring ``n`` nodes costs one target
forward over ``n + 1`` tokens (the root too), ``t(n + 1, L)`` from the latency curve at the
current context ``L``, plus the
drafter's own work and a fixed per-step overhead; it commits ``1 + sum(p_1 .. p_n)`` tokens on
average (the bonus token plus the expected accepted nodes: a node's acceptance probability is
its contribution to the expected accepted length). The policy picks the ``n`` that maximizes

    (1 + p_1 + ... + p_n) / (t(n + 1) + n * draft_cost_per_node + overhead_s)

On a GPU, where ``t`` is flat up to a few dozen tokens, that is a large tree; on a CPU, where
``t(16)`` is about ``2 t(1)``, only the likeliest few nodes pay for themselves.

Nodes must come in descending probability, so that a parent (whose probability is at least its
children's) always precedes its children and every prefix is a valid tree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated

import numpy as np

from specdecode.cost import LatencyCurve, read_cached
from specdecode.registry import at_least

logger = logging.getLogger(__name__)

DEFAULT_OVERHEAD_S = 1e-3  # engine work per step besides the forward: verify, commit, bookkeeping
FALLBACK_T1 = 0.02  # seconds; a 135M model's single-token forward on a laptop CPU
CONTEXT_STEP = 64  # the policy rereads the curve when the context crosses a multiple of this


def fallback_curve(t1: float = FALLBACK_T1) -> LatencyCurve:
    """A CPU-like curve for when no calibration is cached: ``t(n) = t1 * (1 + n / 16)``.

    Linear, so ``t(16)`` is about twice ``t(1)``, as measured for a 135M model on a CPU. On a
    GPU it makes trees too small (never wrong, only slower): run ``specdecode calibrate``.
    """
    return LatencyCurve(
        ns=[1, 256],
        seconds=[t1 * (1 + 1 / 16), t1 * (1 + 256 / 16)],
        device="cpu",
        dtype="unknown",
        model_key="fallback",
        extra={"fallback": True},
    )


class ForwardCosts:
    """The calibrated curve, corrected online from the target forwards actually timed.

    The curve is measured once, at a few context lengths on a quiet machine. While decoding,
    the machine's speed drifts and contexts between or beyond the measured ones cost what the
    interpolation does not say. :meth:`record` takes each timed
    forward; the difference from the curve is fitted as

        observed(n, L) - t(n)  ~  c0 + c1 (n - 1) + (c2 + c3 (n - 1)) L / 1024

    (``n`` tokens scored at context length ``L``) by exponentially weighted least squares with
    a ridge pull toward zero (trust the curve until evidence says otherwise), refitted every
    ``refit`` records. :meth:`t` is the corrected cost at the latest context length. The
    timings come from :class:`specdecode.drafters.base.StepOutcome` (``forward_seconds``,
    ``context``): the drafter that owns the policy records them in its ``observe``.

    Opt-in (``hybrid`` with ``adapt_cost=true``): where the forward's cost hardly depends on
    the number of tokens scored, what the fit attributes to extra nodes is mostly noise, and it
    did not pay in the A/B measured on the 2-core CPU (``scripts/ab_adapt_cost.py``; figures
    in benchmarks/README.md).
    """

    def __init__(self, curve, *, decay: float = 0.97, ridge: float = 2.0, refit: int = 8) -> None:
        self.curve = curve
        self.decay = decay
        self.ridge = ridge
        self.refit = refit
        self.xtx = np.zeros((4, 4))
        self.xty = np.zeros(4)
        self.coef = np.zeros(4)
        self.context = 0
        self.records = 0
        self.version = 0  # bumped at every refit, so that policies know to recompute

    @staticmethod
    def _features(n_tokens: int, context: int) -> np.ndarray:
        m, k = n_tokens - 1, context / 1024.0
        return np.array([1.0, m, k, m * k])

    def record(self, n_tokens: int, context: int, seconds: float) -> None:
        """One target forward scoring ``n_tokens`` tokens after ``context`` cached ones took ``seconds``."""
        if n_tokens < 1 or not seconds > 0:
            return
        x = self._features(n_tokens, context)
        r = seconds - self.curve.t(n_tokens, context)
        self.xtx = self.decay * self.xtx + np.outer(x, x)
        self.xty = self.decay * self.xty + r * x
        self.context = context
        self.records += 1
        if self.records % self.refit == 0:
            self.coef = np.linalg.solve(self.xtx + self.ridge * np.eye(4), self.xty)
            self.version += 1

    def t(self, n_tokens: int, context: int | None = None) -> float:
        """Corrected seconds for a forward over ``n_tokens`` at the latest context length,
        never below half the curve's figure (``context`` is ignored: the recorded one rules)."""
        base = self.curve.t(n_tokens, self.context)
        extra = float(self._features(n_tokens, self.context) @ self.coef)
        return max(base + extra, 0.5 * base)


class BudgetPolicy:
    """Chooses how many of a drafter's best nodes to score, maximizing committed tokens per second.

    ``curve``: anything with ``t(n, context)`` (seconds of a forward scoring ``n`` tokens after
    ``context`` cached ones), usually a :class:`specdecode.cost.LatencyCurve`; ``None`` uses
    :func:`fallback_curve`. ``overhead_s``: per-step cost besides the forward and the drafting.
    ``max_nodes``: never more nodes than this.

    The step costs are read at the context the drafter names (``choose(..., context=L)``),
    recomputed when it moves to another :data:`CONTEXT_STEP`-token bucket.
    """

    def __init__(
        self,
        curve=None,
        *,
        overhead_s: float = DEFAULT_OVERHEAD_S,
        max_nodes: int = 64,
        costs: ForwardCosts | None = None,
    ) -> None:
        if max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0, got {max_nodes}")
        if overhead_s < 0:
            raise ValueError(f"overhead_s must be >= 0, got {overhead_s}")
        self.curve = curve if curve is not None else fallback_curve()
        self.overhead_s = overhead_s
        self.max_nodes = max_nodes
        # step_s[n]: a step's fixed cost with n draft nodes, the forward over n + 1 tokens included;
        # from the online-corrected costs when given (recomputed when they are refitted).
        self.costs = costs
        self._version = -1
        self._bucket: int | None = None  # the context bucket step_s was computed for (None: the curve's own)
        self.step_s = [self.curve.t(n + 1) + overhead_s for n in range(max_nodes + 1)]
        self._refresh()

    def _refresh(self, context: int | None = None) -> None:
        costs = self.costs
        if costs is not None:
            if costs.version != self._version:
                self._version = costs.version
                self.step_s = [costs.t(n + 1) + self.overhead_s for n in range(self.max_nodes + 1)]
            return
        if context is None:
            return
        bucket = int(context) // CONTEXT_STEP
        if bucket != self._bucket:
            self._bucket = bucket
            at = (bucket + 0.5) * CONTEXT_STEP
            self.step_s = [self.curve.t(n + 1, at) + self.overhead_s for n in range(self.max_nodes + 1)]

    @property
    def is_fallback(self) -> bool:
        return bool(getattr(self.curve, "extra", {}).get("fallback"))

    def choose(
        self, probs_desc: Sequence[float], draft_cost_per_node: float = 0.0, context: int | None = None
    ) -> int:
        """The number ``n`` of leading nodes to score (0 means plain decoding this step).

        ``probs_desc``: estimated acceptance probability of each candidate node, descending.
        ``draft_cost_per_node``: seconds of drafting work per node scored. ``context``: tokens
        in the target's cache before the forward (None: as the last call said).
        """
        self._refresh(context)
        step_s = self.step_s
        best_n, best_rate = 0, 1.0 / step_s[0]
        gained = 1.0  # expected committed tokens: the bonus token, then each node's probability
        for n, p in enumerate(probs_desc[: self.max_nodes], 1):
            gained += p
            rate = gained / (step_s[n] + n * draft_cost_per_node)
            if rate > best_rate:
                best_n, best_rate = n, rate
        return best_n

    def expected_rate(
        self,
        probs_desc: Sequence[float],
        n: int,
        draft_cost_per_node: float = 0.0,
        context: int | None = None,
    ) -> float:
        """Expected committed tokens per second when scoring the first ``n`` nodes."""
        self._refresh(context)
        n = min(n, len(probs_desc), self.max_nodes)
        return (1.0 + sum(probs_desc[:n])) / (self.step_s[n] + n * draft_cost_per_node)


# The options of every drafter sized by the policy (``budget: Budget = 0, max_nodes: MaxNodes = 64``).
Budget = Annotated[int, "draft nodes per step (0: chosen each step from the latency curve)", at_least(0)]
MaxNodes = Annotated[int, "most draft nodes per step when chosen automatically", at_least(1)]


def policy_for(
    loaded, *, overhead_s: float = DEFAULT_OVERHEAD_S, max_nodes: int = 64, adapt: bool = False
) -> BudgetPolicy:
    """The policy for loaded model ``loaded`` from its cached latency curve, never measuring one:
    with no cached curve for this model, device and dtype, the CPU-like :func:`fallback_curve`
    (run ``specdecode calibrate`` once to size trees from real timings). With ``adapt``, the
    curve is corrected online by the forwards the engine times (:class:`ForwardCosts`, recorded
    by the drafter from each step's outcome)."""
    curve = read_cached(loaded)
    if curve is None:
        logger.info("no cached latency curve for %s: sizing drafts with the CPU-like fallback", loaded.key)
        curve = fallback_curve()
    costs = ForwardCosts(curve) if adapt else None
    return BudgetPolicy(curve, overhead_s=overhead_s, max_nodes=max_nodes, costs=costs)


def nodes_to_score(
    policy: BudgetPolicy | None, budget: int, probs_desc: Sequence[float], context: int | None = None
) -> int:
    """How many of the best candidates (``probs_desc``, descending) to score: a fixed
    ``budget > 0``, else what ``policy`` chooses at ``context`` cached tokens (0 means plain
    decoding this step)."""
    n = budget if budget > 0 else policy.choose(probs_desc, context=context)
    return min(n, len(probs_desc))
