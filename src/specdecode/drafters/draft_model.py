"""``draft-model``: a smaller model drafts a chain, the target verifies.

One draft forward per token; drafting stops early when the draft's confidence falls below a
threshold that adapts online to what the target accepts (the threshold rises after a
confident token is rejected and falls after an unconfident one is accepted). Under sampling
each draft token is drawn from the draft distribution q, which goes to the verifier with it.

The draft may use another tokenizer: drafting then goes through text
(:mod:`specdecode.drafters._bridge`). The draft keeps its own KV cache in step with the
committed tokens (:class:`DraftLM`); the target's cache is never touched. ``dyspec``
(:mod:`specdecode.drafters.dyspec`) grows a tree with the same draft model.
"""

from __future__ import annotations

from typing import Annotated

import torch

from specdecode.drafters._bridge import bridge_for
from specdecode.drafters.base import Drafter
from specdecode.kvcache import kv_cache
from specdecode.registry import at_least, in_range, register
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.tree import DraftTree, tree_attention


class DraftLM:
    """The draft model with its own KV cache: sync to committed tokens, extend by tree nodes.

    The cache holds the committed tokens :attr:`fed` (the newest, the root, included), then the
    rows of the draft tree being grown, in node order, until :meth:`drop_tree`.
    """

    def __init__(self, loaded) -> None:
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.cache = kv_cache(self.model)  # refuses a model whose cache cannot drop rows
        self.fed: list[int] = []  # committed tokens whose KV is cached

    def _forward(self, ids: list[int], **kwargs) -> torch.Tensor:
        """Feed ``ids``; their logits ``[len(ids), vocab_size]`` (the last ``logits_to_keep`` if given)."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, len(ids)]
        out = self.model(input_ids=x, use_cache=True, **kwargs, **self.cache.kwargs)
        return out.logits[0].float()

    def sync(self, tokens: list[int]) -> torch.Tensor:
        """Cache ``tokens``; return the draft's logits after the last one ``[vocab_size]``."""
        common = 0
        limit = min(len(self.fed), len(tokens) - 1)  # always feed at least the last token
        while common < limit and self.fed[common] == tokens[common]:
            common += 1
        self.cache.crop(common)
        logits = self._forward(tokens[common:], logits_to_keep=1)[-1]
        self.fed = list(tokens)
        return logits

    def extend(self, tokens: list[int], parents: list[int]) -> torch.Tensor:
        """Feed the tree's nodes not cached yet, in node order (``tokens``, ``parents``: the
        whole tree so far, below the root ``fed[-1]``); return their logits ``[new, vocab_size]``."""
        root = len(self.fed) - 1  # the root's row; node i's row is root + 1 + i
        cached = self.cache.length - root - 1  # nodes fed already
        self.cache.check_room(len(tokens) - cached)  # drop_tree() drops them again
        mask, positions = tree_attention(parents, root, self.dtype, self.device, first_row=1 + cached)
        return self._forward(
            tokens[cached:],
            attention_mask=mask,  # [1, 1, new, root + 1 + n]
            position_ids=positions,  # [1, new]
            cache_position=torch.arange(root + 1 + cached, root + 1 + len(tokens), device=self.device),
        )

    def drop_tree(self) -> None:
        self.cache.crop(len(self.fed))


class ConfidenceThreshold:
    """Keep drafting while the draft's confidence is at least :attr:`value`; the value moves by
    ``step`` after each verified draft: down when a low-confidence token was accepted (draft
    more), up when a confident one was rejected (draft less)."""

    def __init__(self, value: float, step: float) -> None:
        self.value = value
        self.step = step

    def update(self, confidences: list[float], accepted: int) -> None:
        if not self.step:
            return
        for i, conf in enumerate(confidences):
            if i < accepted and conf < self.value + 0.2:
                self.value = max(0.0, self.value - self.step)
            elif i == accepted:
                if conf >= self.value:
                    self.value = min(0.95, self.value + self.step)
                break


class DraftModelBase(Drafter):
    """Shared by draft-model and dyspec: the draft model, the tokenizer bridge, the draws."""

    def __init__(self, ctx) -> None:
        # the draft's presence and device: checked by engine.build_decoder (models.pairing)
        self.ctx = ctx
        self.lm = DraftLM(ctx.draft)  # checks the draft's KV cache up front
        self.bridge = bridge_for(ctx.target.tokenizer, ctx.draft.tokenizer)
        self.sampling = SamplingConfig()
        self.gen: torch.Generator | None = None

    def begin(self, prompt_ids, sampling) -> None:
        self.sampling = sampling
        self.gen = None if sampling.greedy else sampling.generator(self.ctx.draft.device)
        if sampling.seed is not None and self.gen is not None:
            self.gen.manual_seed(sampling.seed + 1)
        # this generation's own: the draft's KV cache and the bridge's synced tokens
        self.lm = DraftLM(self.ctx.draft)
        self.bridge = self.bridge.fresh()

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft distribution ``[vocab_size]`` from draft logits ``[vocab_size]``."""
        if self.sampling.greedy:
            return logits.softmax(-1)
        return target_probs(logits, self.sampling)


@register(
    "draft-model",
    "a smaller model drafts a chain; draft length adapts to the draft's confidence (any tokenizer)",
    needs_draft=True,
)
class DraftModel(DraftModelBase):
    def __init__(
        self,
        ctx,
        max_draft: Annotated[int, "longest draft per step", at_least(1)] = 6,
        threshold: Annotated[
            float, "initial confidence threshold to keep drafting", in_range(0, 1, high_open=True)
        ] = 0.4,
        adapt: Annotated[
            float, "threshold step after each verified draft token (0 = fixed)", at_least(0)
        ] = 0.02,
    ) -> None:
        super().__init__(ctx)
        self.max_draft = max_draft
        self.stop = ConfidenceThreshold(threshold, adapt)  # learned across generations (shared)
        self._conf: list[float] = []

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        logits = self.lm.sync(self.bridge.to_draft(tokens))  # [vocab_size]
        limit = min(self.max_draft, max_depth) + self.bridge.overdraft
        sampling = not self.sampling.greedy and self.bridge.exact  # bridged drafts are one-hot
        out: list[int] = []
        rows: list[torch.Tensor] = []  # q of each draft token, [vocab_size] each
        self._conf = []
        while True:
            q = self._probs(logits)  # [vocab_size]
            x = int(torch.multinomial(q, 1, generator=self.gen)) if sampling else int(q.argmax())
            conf = float(q.max())
            if out and conf < self.stop.value:
                break
            out.append(x)
            rows.append(q)
            self._conf.append(conf)
            if len(out) >= limit:
                break
            logits = self.lm.extend(out, list(range(-1, len(out) - 1)))[0]
        self.lm.drop_tree()
        draft_probs = torch.stack(rows) if sampling else None  # [len(out), vocab_size]
        return DraftTree.chain(self.bridge.to_target(out, max_depth), draft_probs)

    def observe(self, outcome) -> None:
        if self.bridge.exact:  # a bridged draft's confidences are about the draft's tokens
            self.stop.update(self._conf[: len(outcome.tree)], outcome.verdict.accepted)
