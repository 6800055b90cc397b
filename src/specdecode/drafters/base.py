"""The drafter contract: ``begin`` a sequence, ``propose`` a tree, ``observe`` the outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from specdecode.sampling import SamplingConfig
from specdecode.tree import DraftTree

if TYPE_CHECKING:
    from specdecode.models.loader import LoadedModel
    from specdecode.verify import Verdict


@dataclass
class MethodContext:
    """What a method may use: the target (never its KV cache), an optional draft model."""

    target: LoadedModel
    draft: LoadedModel | None = None


@dataclass
class StepOutcome:
    """What one verification step produced, for drafters that learn from it."""

    tree: DraftTree
    logits: torch.Tensor  # [n + 1, vocab]: target logits after the root and after each node
    verdict: Verdict
    tokens: list[int]  # every committed token after this step (prompt included)


@dataclass
class Candidates:
    """A drafter's candidate nodes before the budget cut, for composing drafters (``hybrid``).

    Nodes in topological order (``parents[i] < i``); ``probs[i]``: the estimated probability
    that the target accepts node ``i`` (never above its parent's); ``tags[i]``: the drafter's
    own label of the node, handed back to :meth:`Drafter.learn` when the node is judged;
    ``cost_per_node``: seconds of the drafter's work per node scored.
    """

    tokens: list[int]
    parents: list[int]
    probs: list[float]
    tags: list
    cost_per_node: float = 0.0


class Drafter:
    """Base class: proposes nothing, which is plain autoregressive decoding.

    Drafters that can be combined with others (``hybrid``) also implement :meth:`candidates`
    and :meth:`learn`; their own ``propose``/``observe`` are built from the two.
    """

    composable = False

    def begin(self, prompt_ids: list[int], sampling: SamplingConfig) -> None:
        """A new sequence starts; ``prompt_ids`` is the whole prompt."""

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        """A draft tree below ``tokens[-1]`` (the root), no deeper than ``max_depth`` (>= 1)."""
        return DraftTree.empty()

    def observe(self, outcome: StepOutcome) -> None:
        """The target verified the last proposal."""

    # ---- composition (optional) -----------------------------------------------------------
    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        """Every candidate node with its acceptance estimate, uncut (see :class:`Candidates`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be combined with other drafters")

    def learn(self, outcome: StepOutcome, judged: list[tuple[object, bool]]) -> None:
        """Learn from a verification: ``judged`` holds ``(tag, accepted)`` for each of this
        drafter's candidate nodes that the verifier judged (those whose parent it accepted)."""

    def chosen(self, n: int) -> None:
        """``n`` of the last :meth:`candidates` were scored (a hint for how many to search next)."""
