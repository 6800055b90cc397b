"""``draft-model``: a smaller model drafts a chain (or k sampled drafts), the target verifies.

One draft forward per token; drafting stops early when the draft's confidence falls below a
threshold that adapts online to what the target accepts (the threshold rises after a
confident token is rejected and falls after an unconfident one is accepted). With
``stop_head=online`` (one chain only) the SpecDec++-style stop rule of
:mod:`specdecode.drafters._stop` replaces the threshold; it learns only when the two models share
a tokenizer (a bridged draft's features are about the draft's tokens). Under sampling each draft
token is drawn from the draft distribution q, which goes to the verifier with it.

Under sampling with the residual coupling, ``drafts=k`` draws k drafts independently from q
(SpecTr's setting), kept as one tree: with ``verifier=spectr`` a trie of the k draws (equal
prefixes merged, each node counting the draws through it; one draft forward per level)
verified by K-SEQ (:func:`specdecode.verify.verify_kseq`); with ``verifier=rrs`` k separate
chains verified by recursive rejection sampling (SpecInfer). Both keep the target's
distribution exactly. Greedy drafts and drafts under the Gumbel coupling are deterministic,
so k of them would be k copies: one chain is drafted then.

Under the Gumbel coupling (``coupling=gumbel``, or a seed with ``auto``) the verifier takes,
at sequence position t, ``argmax(log p + g_t)`` with noise ``g_t`` keyed by the seed and t
(:class:`specdecode.sampling.GumbelNoise`). The draft takes ``argmax(log q + g_t)`` with the
same noise, so it proposes what the target will choose whenever p and q are close
(drafter-invariant speculative decoding, Daliri et al. 2024); the text is ``ar``'s with that
seed whatever is drafted.

The draft may use another tokenizer: drafting then goes through text
(:mod:`specdecode.drafters._bridge`). The draft keeps its own KV cache in step with the
committed tokens (:class:`DraftLM`); the target's cache is never touched. ``dyspec``
(:mod:`specdecode.drafters.dyspec`) grows a tree with the same draft model.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import torch

from specdecode.drafters._bridge import bridge_for
from specdecode.drafters._stop import StopHead, StopThreshold, StopWalk, stop_head_for
from specdecode.drafters.base import Drafter
from specdecode.errors import SpecDecodeError
from specdecode.kvcache import kv_cache
from specdecode.registry import Check, at_least, in_range, register
from specdecode.sampling import GumbelNoise, SamplingConfig, target_probs
from specdecode.tree import DraftTree, tree_attention
from specdecode.verify import MultiDraft

VERIFIERS = ("spectr", "rrs")


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
        self.noise: GumbelNoise | None = None

    def begin(self, prompt_ids, sampling) -> None:
        self.sampling = sampling
        self.gen = None if sampling.greedy else sampling.generator(self.ctx.draft.device)
        if sampling.seed is not None and self.gen is not None:
            self.gen.manual_seed(sampling.seed + 1)
        # this generation's own: the draft's KV cache and the bridge's synced tokens
        self.lm = DraftLM(self.ctx.draft)
        self.bridge = self.bridge.fresh()
        # Under the Gumbel coupling, the verifier's noise (same seed, same device: the same
        # rows), for drafts coupled with the target's choices. The engine hands drafters the
        # seed its noise is keyed by (a random one when none was given).
        coupled = sampling.gumbel and sampling.seed is not None and self.bridge.exact
        self.noise = GumbelNoise(sampling.seed, self.ctx.target.device) if coupled else None

    def _coupled_draw(self, q: torch.Tensor, position: int) -> int:
        """``argmax(log q + g)`` for q ``[vocab_size]`` with the verifier's noise ``g`` of the
        token at sequence ``position`` (row width: the target's vocabulary, as the verifier's)."""
        width = _logits_width(self.ctx.target.model) or q.shape[-1]
        g = self.noise.at(position, width).to(q.device)  # [target vocab]
        scores = q.log()
        n = min(width, q.shape[-1])
        scores[:n] += g[:n]
        if q.shape[-1] > width:  # tokens the target cannot give
            scores[width:] = float("-inf")
        return int(scores.argmax())

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft distribution ``[vocab_size]`` from draft logits ``[vocab_size]``."""
        if self.sampling.greedy:
            return logits.softmax(-1)
        return target_probs(logits, self.sampling)


def _logits_width(model) -> int | None:
    """The width of ``model``'s logits (its output embedding's rows), when it says."""
    try:
        return int(model.get_output_embeddings().weight.shape[0])
    except (AttributeError, TypeError):
        return None


@register(
    "draft-model",
    "a smaller model drafts a chain (or k sampled drafts, SpecTr); draft length adapts to the "
    "draft's confidence (any tokenizer)",
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
        drafts: Annotated[
            int,
            "k drafts sampled independently from the draft per step, one tree (SpecTr); under "
            "greedy or the gumbel coupling drafts are deterministic and one chain is drafted",
            at_least(1),
        ] = 1,
        verifier: Annotated[
            str,
            "how k > 1 drafts are verified: spectr (K-SEQ optimal transport over a trie of the "
            "draws) or rrs (recursive rejection sampling over k chains, SpecInfer); both lossless",
            Check(lambda v: v in VERIFIERS, f"one of {', '.join(VERIFIERS)}"),
        ] = "spectr",
        stop_head: StopHead = "none",
        stop_threshold: StopThreshold = 0.7,
    ) -> None:
        if stop_head != "none" and drafts > 1:
            raise SpecDecodeError(
                f"draft-model: stop_head={stop_head} stops a single chain; it cannot be combined with "
                f"drafts={drafts}: use drafts=1 or stop_head=none"
            )
        super().__init__(ctx)
        self.max_draft = max_draft
        self.drafts = drafts
        self.verifier = verifier
        self.stop = ConfidenceThreshold(threshold, adapt)  # learned across generations (shared)
        self.head = stop_head_for(stop_head)  # learned across generations (shared)
        self.stop_threshold = stop_threshold
        self._walk: StopWalk | None = None  # per chain
        self._conf: list[float] = []  # per draft token of a chain
        self._node_conf: list[float] | None = None  # per node of a multi-draft tree

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        logits = self.lm.sync(self.bridge.to_draft(tokens))  # [vocab_size]
        limit = min(self.max_draft, max_depth) + self.bridge.overdraft
        sampling = not self.sampling.greedy and self.bridge.exact  # bridged drafts are one-hot
        coupled = self.noise is not None
        if coupled:
            self.noise.forget(len(tokens))
        self._node_conf = None
        if sampling and not coupled and self.drafts > 1:
            return self._propose_multi(logits, limit)
        out: list[int] = []
        rows: list[torch.Tensor] = []  # q of each draft token, [vocab_size] each
        self._conf = []
        self._walk = walk = StopWalk(self.head, self.stop_threshold) if self.head is not None else None
        while True:
            q = self._probs(logits)  # [vocab_size]
            if coupled:  # the token at sequence position len(tokens) + len(out)
                x = self._coupled_draw(q, len(tokens) + len(out))
            elif sampling:
                x = int(torch.multinomial(q, 1, generator=self.gen))
            else:
                x = int(q.argmax())
            conf = float(q.max())
            stop = (bool(out) and conf < self.stop.value) if walk is None else not walk.keep(q)
            if stop:
                break
            out.append(x)
            rows.append(q)
            self._conf.append(conf)
            if len(out) >= limit:
                break
            logits = self.lm.extend(out, list(range(-1, len(out) - 1)))[0]
        self.lm.drop_tree()
        # coupled drafts are deterministic given the noise: the verifier needs no q
        draft_probs = torch.stack(rows) if sampling and not coupled else None  # [len(out), vocab]
        return DraftTree.chain(self.bridge.to_target(out, max_depth), draft_probs)

    def _propose_multi(self, logits: torch.Tensor, limit: int) -> DraftTree:
        """k drafts drawn independently from q, no deeper than ``limit``, level by level (one
        draft forward per level for every node of the level). A node stops growing when its q's
        confidence is below the threshold, a function of its prefix only, so every draw through
        it stops alike and the draws below any prefix stay i.i.d. from q, as K-SEQ and RRS need.

        ``spectr``: a trie, one node per distinct token below a node with the number of draws
        through it (:class:`MultiDraft`); ``rrs``: each draw its own node, i.e. k chains."""
        trie = self.verifier == "spectr"
        tokens: list[int] = []
        parents: list[int] = []
        rows: list[torch.Tensor] = []  # [vocab_size] each: the q a node was drawn from
        counts: list[int] = []
        conf: list[float] = []
        frontier = [(-1, self.drafts, logits)]  # (node, draws through it, draft logits after it)
        depth = 0
        while frontier:
            new: list[int] = []
            for node, n, after in frontier:
                q = self._probs(after)  # [vocab_size]
                c = float(q.max())
                if depth and c < self.stop.value:
                    continue
                draws = torch.multinomial(q, n, replacement=True, generator=self.gen).tolist()
                groups = Counter(draws).items() if trie else [(x, 1) for x in draws]
                for x, m in groups:
                    new.append(len(tokens))
                    tokens.append(x)
                    parents.append(node)
                    rows.append(q)
                    counts.append(m)
                    conf.append(c)
            depth += 1
            if not new or depth >= limit:
                break
            out = self.lm.extend(tokens, parents)  # [len(new), vocab_size]
            frontier = [(i, counts[i], out[j]) for j, i in enumerate(new)]
        self.lm.drop_tree()
        self._node_conf = conf
        probs = torch.stack(rows)  # [n, vocab_size]
        if trie:
            return MultiDraft(tokens, parents, probs, counts=counts)
        return DraftTree(tokens, parents, probs)

    def observe(self, outcome) -> None:
        if not self.bridge.exact:  # a bridged draft's confidences are about the draft's tokens
            return
        if self._node_conf is None:
            if self._walk is not None:
                self._walk.learn(len(outcome.tree), outcome.verdict.accepted)
            else:
                self.stop.update(self._conf[: len(outcome.tree)], outcome.verdict.accepted)
            return
        # a multi-draft tree: the confidences along the accepted path, then the next level's
        path = outcome.verdict.path
        confidences = [self._node_conf[i] for i in path]
        below = outcome.tree.children(path[-1] if path else -1)
        if below:
            confidences.append(self._node_conf[below[0]])
        self.stop.update(confidences, len(path))
