"""``dyspec`` (DySpec, Xiong et al. 2024): the draft model grows a dynamic token tree.

Candidates are ranked by their draft path probability and the best are expanded, a level per
draft forward, until the token budget is spent. The budget comes from the measured cost curve
(see :mod:`specdecode.budget`) unless given. The draft model, its KV cache and the draws are
:class:`specdecode.drafters.draft_model.DraftModelBase`'s; the draft must share the target's
tokenizer.
"""

from __future__ import annotations

import heapq
from typing import Annotated

import torch

from specdecode.budget import Budget
from specdecode.drafters.draft_model import DraftModelBase
from specdecode.errors import SpecDecodeError
from specdecode.registry import at_least, register
from specdecode.tree import DraftTree


@register(
    "dyspec",
    "DySpec: the draft model grows a dynamic token tree by draft probability under a cost-based budget",
    needs_draft=True,
)
class DySpec(DraftModelBase):
    def __init__(
        self,
        ctx,
        budget: Budget = 0,
        max_depth: Annotated[int, "deepest tree level", at_least(1)] = 6,
        branch: Annotated[int, "children considered per expanded node", at_least(1)] = 4,
        width: Annotated[int, "nodes expanded per draft forward", at_least(1)] = 4,
    ) -> None:
        super().__init__(ctx)
        if not self.bridge.exact:
            raise SpecDecodeError(
                "dyspec needs a draft model with the target's tokenizer; "
                "use draft-model for a different tokenizer"
            )
        self.depth_limit = max_depth
        self.branch = branch
        self.width = width
        self.fixed_budget = budget
        self.policy = None
        if not budget:
            from specdecode.budget import policy_for  # the cost-based policy

            self.policy = policy_for(ctx.target)

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        depth_limit = min(self.depth_limit, max_depth)
        logits = self.lm.sync(tokens)  # [vocab_size]
        toks: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        scores: list[float] = []  # draft path probability of each node
        heap: list[tuple[float, int, int, int]] = []  # (-path prob, tie, parent, token)
        tie = 0

        def push(parent: int, base: float, logit_row: torch.Tensor) -> None:
            nonlocal tie
            q = self._probs(logit_row)  # [vocab_size]
            top = torch.topk(q, self.branch)
            for p, t in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                heapq.heappush(heap, (-base * p, tie, parent, t))
                tie += 1

        push(-1, 1.0, logits)
        cap = self.fixed_budget or 64
        while heap and len(toks) < cap:
            batch = []
            while heap and len(batch) < self.width and len(toks) + len(batch) < cap:
                neg, _, parent, t = heapq.heappop(heap)
                d = 1 if parent == -1 else depths[parent] + 1
                if d > depth_limit:
                    continue
                batch.append((parent, t, -neg, d))
            if not batch:
                break
            if self.policy is not None and not self.fixed_budget:
                # stop growing when the cost curve says more nodes no longer pay
                want = self.policy.choose(
                    sorted(scores + [b[2] for b in batch], reverse=True), context=len(tokens) - 1
                )
                if want <= len(toks):
                    break
                batch = batch[: want - len(toks)]
            first = len(toks)
            for parent, t, s, d in batch:
                toks.append(t)
                parents.append(parent)
                depths.append(d)
                scores.append(s)
            new = list(range(first, len(toks)))
            if len(toks) < cap:  # children are still wanted: one draft forward for the batch
                rows = self.lm.extend(toks, parents)  # [len(new), vocab_size]
                for r, node in enumerate(new):
                    if depths[node] < depth_limit:
                        push(node, scores[node], rows[r])
        self.lm.drop_tree()
        return DraftTree(toks, parents)
