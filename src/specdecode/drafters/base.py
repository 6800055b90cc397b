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


class Drafter:
    """Base class: proposes nothing, which is plain autoregressive decoding."""

    def begin(self, prompt_ids: list[int], sampling: SamplingConfig) -> None:
        """A new sequence starts; ``prompt_ids`` is the whole prompt."""

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        """A draft tree below ``tokens[-1]`` (the root), no deeper than ``max_depth`` (>= 1)."""
        return DraftTree.empty()

    def observe(self, outcome: StepOutcome) -> None:
        """The target verified the last proposal."""
