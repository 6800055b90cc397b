"""A SpecDec++-style stop rule (Huang et al. 2024) for the methods that draft from a
distribution: ``swift``, ``kangaroo``, ``draft-model`` (one chain) and the head methods
``medusa``, ``hydra``, ``clover`` (the depth of their trees).

An acceptance predictor (:class:`AcceptanceHead`) gives each draft token's probability of
being accepted given that every token before it was; drafting stops once the predicted
probability that some token so far is rejected, ``1 - prod P``, exceeds ``stop_threshold``
(the first draft token is always drafted: it is the data the predictor learns from).
SpecDec++ trains its head offline on the draft model's hidden states; this one is a logistic
model of the draft distribution's confidence, entropy and depth, trained online from every
verification (no training run, nothing saved), shared by every fork of a drafter.

Each method declares the two options with :data:`StopHead` and :data:`StopThreshold`, builds
its predictor with :func:`stop_head_for`, and runs one :class:`StopWalk` per proposal.
"""

from __future__ import annotations

from typing import Annotated

import torch

from specdecode.registry import Check, in_range

STOP_HEADS = ("none", "online")

StopHead = Annotated[
    str,
    "when to stop drafting: none (the method's own rule) or online (SpecDec++: stop once the "
    "predicted probability that some draft token is rejected exceeds stop_threshold; the "
    "acceptance predictor trained online)",
    Check(lambda v: v in STOP_HEADS, f"one of {', '.join(STOP_HEADS)}"),
]

StopThreshold = Annotated[
    float, "SpecDec++'s threshold on P(some draft token is rejected)", in_range(0, 1, low_open=True)
]


class AcceptanceHead:
    """P(a draft token is accepted | every token before it was): ``sigmoid(w . x)`` with
    ``x = [1, logit(confidence), entropy, depth / 8]``, trained online by SGD on the log loss
    from the tokens the verifier judged. Starts as ``P = confidence``. Shared across forks."""

    def __init__(self, lr: float = 0.05) -> None:
        self.w = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
        self.lr = lr

    @staticmethod
    def features(q: torch.Tensor, depth: int) -> torch.Tensor:
        """``x`` for a draft token at ``depth`` (1: below the root) drawn from ``q`` ``[vocab]``."""
        conf = float(q.max())
        conf = min(max(conf, 1e-6), 1 - 1e-6)
        entropy = float(-(q * q.clamp_min(1e-12).log()).sum())
        return torch.tensor(
            [1.0, torch.logit(torch.tensor(conf)).item(), entropy, depth / 8], dtype=torch.float64
        )

    def prob(self, x: torch.Tensor) -> float:
        return float(torch.sigmoid(self.w @ x))

    def update(self, xs: list[torch.Tensor], accepted: int) -> None:
        """The verifier accepted the first ``accepted`` of the tokens with features ``xs``: the
        judged ones are those up to the first rejection."""
        for i, x in enumerate(xs[: accepted + 1]):
            label = 1.0 if i < accepted else 0.0
            self.w += self.lr * (label - float(torch.sigmoid(self.w @ x))) * x


def stop_head_for(stop_head: str) -> AcceptanceHead | None:
    """The predictor for option value ``stop_head`` (None: the method's own stop rule)."""
    return AcceptanceHead() if stop_head == "online" else None


class StopWalk:
    """The stop rule over one proposal's draft tokens, in depth order: :meth:`keep` says whether
    the next one is drafted; :attr:`features` holds those of the tokens kept, for
    :meth:`AcceptanceHead.update` once the verifier has judged them."""

    def __init__(self, head: AcceptanceHead, threshold: float) -> None:
        self.head = head
        self.threshold = threshold
        self.alive = 1.0  # predicted probability that every draft token so far is accepted
        self.features: list[torch.Tensor] = []

    def keep(self, q: torch.Tensor) -> bool:
        """Whether to draft the next token (depth ``len(features) + 1``) from ``q`` ``[vocab]``."""
        x = self.head.features(q, len(self.features) + 1)
        self.alive *= self.head.prob(x)
        if self.features and 1.0 - self.alive > self.threshold:  # the first token always
            return False
        self.features.append(x)
        return True

    def learn(self, judged: int, accepted: int) -> None:
        """The verifier judged the first ``judged`` kept tokens and accepted ``accepted`` of them."""
        self.head.update(self.features[:judged], accepted)
