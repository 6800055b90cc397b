"""``draft-model`` and ``dyspec``: a smaller model drafts, the target verifies.

``draft-model`` drafts a chain, one draft forward per token, and stops early when the
draft's confidence falls below a threshold that adapts online to what the target accepts
(the threshold rises after a confident token is rejected and falls after an unconfident
one is accepted). Under sampling each draft token is drawn from the draft distribution q,
which goes to the verifier with it.

``dyspec`` (DySpec, Xiong et al. 2024) grows a token *tree* instead: candidates are ranked
by their draft path probability and the best are expanded, a level per draft forward, until
the token budget is spent. The budget comes from the measured cost curve (see
:mod:`specdecode.budget`) unless given.

When the draft's tokenizer differs from the target's, drafting goes through text (universal
assisted decoding): the committed text is re-tokenized for the draft, and the draft's
continuation is re-tokenized for the target. Such drafts are deterministic, so they are
verified as one-hot, which keeps sampling lossless.

The draft keeps its own KV cache in step with the committed tokens; the target's cache is
never touched.
"""

from __future__ import annotations

import heapq

import torch
from transformers import DynamicCache

from specdecode.drafters.base import Drafter
from specdecode.errors import SpecDecodeError
from specdecode.registry import Option, register
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.target import cache_argument
from specdecode.tree import DraftTree

BRIDGE_PROBE = "Hello, world! 1234 + 56 = 1290.\n\tdef f(x): return x ** 2  # café, naïve, 你好"


def same_vocabulary(a, b) -> bool:
    """True when two tokenizers map the same strings to the same ids."""
    if a is b:
        return True
    try:
        return a.get_vocab() == b.get_vocab()
    except (AttributeError, NotImplementedError):
        return False


def check_bridge(target_tok, draft_tok) -> None:
    """Refuse a draft tokenizer that cannot carry the target's text."""
    for name, tok in (("draft", draft_tok), ("target", target_tok)):
        if tok is None:
            raise SpecDecodeError(f"the {name} model has no tokenizer, so its vocabulary cannot be bridged")
        ids = tok.encode(BRIDGE_PROBE, add_special_tokens=False)
        back = tok.decode(ids, skip_special_tokens=True)
        if back != BRIDGE_PROBE:
            raise SpecDecodeError(
                f"the {name} model's tokenizer cannot represent ordinary text without loss "
                f"({BRIDGE_PROBE!r} came back as {back!r}), so its vocabulary cannot be bridged; "
                "use a draft model with a byte-level tokenizer, or one with the target's tokenizer"
            )


class DraftLM:
    """The draft model with its own KV cache: sync to committed tokens, extend by tree nodes."""

    def __init__(self, loaded) -> None:
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.cache_arg = cache_argument(self.model)
        self.cache: DynamicCache | None = None
        self.fed: list[int] = []  # committed tokens whose KV is cached

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.fed = []

    def _forward(self, ids: list[int], **kwargs) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, use_cache=True, **{self.cache_arg: self.cache}, **kwargs)
        return out.logits[0].float()

    def sync(self, tokens: list[int]) -> torch.Tensor:
        """Cache ``tokens``; return the draft's logits after the last one ``[vocab]``."""
        if self.cache is None:
            self.reset()
        common = 0
        limit = min(len(self.fed), len(tokens) - 1)  # always feed at least the last token
        while common < limit and self.fed[common] == tokens[common]:
            common += 1
        if common < len(self.fed):
            self.cache.crop(common - len(self.fed))
        new = tokens[common:]
        logits = self._forward(new, logits_to_keep=1)[-1]
        self.fed = list(tokens)
        return logits

    def extend(
        self, nodes: list[int], parents: list[int], tokens: list[int], depths: list[int]
    ) -> torch.Tensor:
        """Feed tree nodes ``nodes`` (indices into the tree so far, fed in index order).

        ``parents``/``tokens``/``depths`` describe the whole tree so far. Returns logits
        ``[len(nodes), vocab]``. Rows of earlier nodes must already be cached, in index order.
        """
        base = len(self.fed)
        fed_nodes = self.cache.get_seq_length() - base
        assert nodes == list(range(fed_nodes, fed_nodes + len(nodes)))
        total = base + fed_nodes + len(nodes)
        allowed = torch.zeros(len(nodes), total, dtype=torch.bool)
        allowed[:, :base] = True
        for r, node in enumerate(nodes):
            a = node
            while a != -1:
                allowed[r, base + a] = True
                a = parents[a]
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(
            ~allowed, torch.finfo(self.dtype).min
        )
        positions = torch.tensor([[base - 1 + depths[n] for n in nodes]], device=self.device)
        return self._forward(
            [tokens[n] for n in nodes],
            attention_mask=mask[None, None].to(self.device),
            position_ids=positions,
            cache_position=torch.arange(base + fed_nodes, total, device=self.device),
        )

    def drop_tree(self) -> None:
        extra = self.cache.get_seq_length() - len(self.fed)
        if extra:
            self.cache.crop(-extra)


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


class _DraftModelBase(Drafter):
    """Shared by draft-model and dyspec: the draft model, tokenizer bridging, sync."""

    def __init__(self, ctx) -> None:
        if ctx.draft is None:
            raise SpecDecodeError("this method needs a draft model: pass --draft MODEL (or --draft default)")
        if ctx.draft.device != ctx.target.device:
            raise SpecDecodeError(
                f"the draft model is on {ctx.draft.device} but the target is on {ctx.target.device}: "
                "load both on one device"
            )
        self.ctx = ctx
        self.lm = DraftLM(ctx.draft)
        self.bridged = not same_vocabulary(ctx.target.tokenizer, ctx.draft.tokenizer)
        if self.bridged:
            check_bridge(ctx.target.tokenizer, ctx.draft.tokenizer)
        self.sampling = SamplingConfig()
        self.gen: torch.Generator | None = None

    def begin(self, prompt_ids, sampling) -> None:
        self.sampling = sampling
        self.gen = None if sampling.greedy else sampling.generator(self.lm.device)
        if sampling.seed is not None and self.gen is not None:
            self.gen.manual_seed(sampling.seed + 1)
        self.lm = DraftLM(self.ctx.draft)  # this generation's draft KV cache
        self.lm.reset()
        self._dtokens: list[int] = []
        self._synced = 0  # target tokens already translated into _dtokens
        self._pending_text_ids: list[int] = []

    def _draft_context(self, tokens: list[int]) -> list[int]:
        """The committed context in draft token ids."""
        if not self.bridged:
            return tokens
        new = tokens[self._synced :]
        if new:
            text = self.ctx.target.tokenizer.decode(new, skip_special_tokens=False)
            if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                self._dtokens.extend(self.ctx.draft.tokenizer.encode(text, add_special_tokens=False))
                self._synced = len(tokens)
        return self._dtokens or [self.ctx.draft.tokenizer.eos_token_id or 0]

    def _to_target(self, draft_ids: list[int], max_depth: int) -> list[int]:
        text = self.ctx.draft.tokenizer.decode(draft_ids, skip_special_tokens=True)
        ids = self.ctx.target.tokenizer.encode(text, add_special_tokens=False)
        # The last token may be a word cut short by the draft's own boundaries: leave it out.
        return ids[: max(0, min(len(ids) - 1, max_depth))] if len(ids) > 1 else ids[:max_depth]

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sampling.greedy:
            return logits.softmax(-1)
        return target_probs(logits, self.sampling)


@register(
    "draft-model",
    "a smaller model drafts a chain; draft length adapts to the draft's confidence (any tokenizer)",
    options={
        "max_draft": Option(int, 6, "longest draft per step", lambda v: v >= 1, ">= 1"),
        "threshold": Option(
            float, 0.4, "initial confidence threshold to keep drafting", lambda v: 0 <= v < 1, "in [0, 1)"
        ),
        "adapt": Option(
            float,
            0.02,
            "threshold step after each verified draft token (0 = fixed)",
            lambda v: v >= 0,
            ">= 0",
        ),
    },
    needs_draft=True,
)
class DraftModel(_DraftModelBase):
    def __init__(self, ctx, max_draft: int = 6, threshold: float = 0.4, adapt: float = 0.02) -> None:
        super().__init__(ctx)
        self.max_draft = max_draft
        self.stop = ConfidenceThreshold(threshold, adapt)  # learned across generations (shared)
        self._conf: list[float] = []

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        context = self._draft_context(tokens)
        limit = min(self.max_draft, max_depth)
        logits = self.lm.sync(context)
        out: list[int] = []
        rows: list[torch.Tensor] = []
        self._conf = []
        sampling = not self.sampling.greedy and not self.bridged
        while True:
            q = self._probs(logits)
            if sampling:
                x = int(torch.multinomial(q, 1, generator=self.gen))
                rows.append(q)
            else:
                x = int(q.argmax())
            conf = float(q[x]) if not sampling else float(q.max())
            if out and conf < self.stop.value:
                break
            out.append(x)
            self._conf.append(conf)
            if len(out) >= limit + (1 if self.bridged else 0):
                break
            logits = self.lm.extend(
                [len(out) - 1], list(range(-1, len(out) - 1)), out, list(range(1, len(out) + 1))
            )[0]
        self.lm.drop_tree()
        if self.bridged:
            return DraftTree.chain(self._to_target(out, max_depth))
        if sampling:
            rows = rows[: len(out)]
            return DraftTree.chain(out, torch.stack(rows))
        return DraftTree.chain(out)

    def observe(self, outcome) -> None:
        if not self.bridged:
            self.stop.update(self._conf[: len(outcome.tree)], outcome.verdict.accepted)


@register(
    "dyspec",
    "DySpec: the draft model grows a dynamic token tree by draft probability under a cost-based budget",
    options={
        "budget": Option(
            int, 0, "tree nodes per step (0 = from the measured cost curve)", lambda v: v >= 0, ">= 0"
        ),
        "max_depth": Option(int, 6, "deepest tree level", lambda v: v >= 1, ">= 1"),
        "branch": Option(int, 4, "children considered per expanded node", lambda v: v >= 1, ">= 1"),
        "width": Option(int, 4, "nodes expanded per draft forward", lambda v: v >= 1, ">= 1"),
    },
    needs_draft=True,
)
class DySpec(_DraftModelBase):
    def __init__(self, ctx, budget: int = 0, max_depth: int = 6, branch: int = 4, width: int = 4) -> None:
        super().__init__(ctx)
        if self.bridged:
            raise SpecDecodeError(
                "dyspec needs a draft model with the target's tokenizer; use draft-model for a different tokenizer"
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
        logits = self.lm.sync(tokens)
        toks: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        scores: list[float] = []  # draft path probability of each node
        heap: list[tuple[float, int, int, int]] = []  # (-path prob, tie, parent, token)
        tie = 0

        def push(parent: int, base: float, logit_row: torch.Tensor) -> None:
            nonlocal tie
            q = self._probs(logit_row)
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
                want = self.policy.choose(sorted(scores + [b[2] for b in batch], reverse=True))
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
                rows = self.lm.extend(new, parents, toks, depths)
                for r, node in enumerate(new):
                    if depths[node] < depth_limit:
                        push(node, scores[node], rows[r])
        self.lm.drop_tree()
        return DraftTree(toks, parents)
