"""``medusa``, ``hydra`` and ``clover``: trained draft heads on the target's last hidden state propose a
token tree (the heads: :mod:`specdecode.training.heads`; training: ``specdecode train``).

Each step the drafter reads, through the target's read-only
:class:`specdecode.target.TargetReader`, the final hidden state ``h`` of the token whose logits
gave the root (the target's forward computed it anyway), and grows a tree below the root:

- ``medusa``: every head runs once on ``h``; the tree is the best-first product of their top-k
  lists (a node at depth ``d`` holds one of head ``d``'s top tokens), ranked by the product of
  the per-edge acceptance estimates along its path.
- ``hydra``: head ``d`` also sees the embeddings of the root and of the tokens on the path
  above, so the tree grows level by level: the ``width`` likeliest nodes of a level are
  expanded together (one batched head + LM head product per level).
- ``clover`` (simplified Clover): the heads are chained, head ``d`` seeing head ``d - 1``'s state
  and the token drafted at its parent (a regressive connection); grown level by level as hydra.

A head's probability for its token is calibrated into an acceptance estimate per depth and
probability bin from what the target accepted (:class:`AcceptanceRates`); the latency-curve
budget (:mod:`specdecode.budget`) chooses how many of the ranked nodes to score. Drafts are
deterministic (top-k, distinct siblings), so the shared verifier keeps the output the target's
under greedy decoding and sampling alike.

With ``stop_head=online`` the SpecDec++-style stop rule of :mod:`specdecode.drafters._stop`
caps the tree's depth: walking the *top-1 path* (each depth's likeliest child of the path
node above), it multiplies the predictor's acceptance probabilities of the heads'
distributions along it and stops at the first depth where the predicted probability that some
token is rejected exceeds ``stop_threshold`` (depth 1 always kept); the budget then sizes the
tree within that depth. The predictor learns from the verifier's outcome on the top-1 path
nodes it judged (up to the first rejection). For hydra and clover, whose heads see the path,
the walk follows the top-1 path while its nodes are among the ``width`` expanded per level;
past that the depth is not capped further.
"""

from __future__ import annotations

import heapq
import time
from pathlib import Path
from typing import Annotated

import torch

from specdecode.budget import Budget, MaxNodes, policy_for
from specdecode.drafters._estimates import AcceptanceRates, sort_by_probability
from specdecode.drafters._stop import StopHead, StopThreshold, StopWalk, stop_head_for
from specdecode.drafters.base import CandidateDrafter, Candidates
from specdecode.errors import SpecDecodeError
from specdecode.registry import at_least, register
from specdecode.target import check_readable
from specdecode.training.heads import default_heads_path, load_heads

BINS = 10  # head-probability bins per depth for the acceptance estimates

HeadsPath = Annotated[
    str,
    "trained heads (safetensors from `specdecode train`); empty: the default location for this model",
]


DraftVocab = Annotated[
    int,
    "draft only among the N tokens that carried the most probability in the heads' training text "
    "(the LM head product over N rows instead of the whole vocabulary; 0: every token)",
    at_least(0),
]


class HeadDrafter(CandidateDrafter):
    """Shared by medusa and hydra: the heads, the estimates, the reader of ``h``."""

    method = ""
    reads_target = frozenset({"hidden"})
    # Not a hybrid source (yet): hybrid would have to hand its sources the target reader.
    composable = False

    def __init__(
        self,
        ctx,
        heads: str,
        top_k: int,
        budget: int,
        max_nodes: int,
        draft_vocab: int,
        stop_head: str = "none",
        stop_threshold: float = 0.7,
    ) -> None:
        loaded = ctx.target
        check_readable(loaded, self.method)
        model = loaded.model
        self.lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if self.lm_head is None or self.embed is None:
            raise SpecDecodeError(
                f"{self.method} runs its heads through the target's embeddings and LM head, which "
                f"{type(model).__name__} does not expose: use another method"
            )
        path = Path(heads).expanduser() if heads else default_heads_path(loaded, self.method)
        self.heads, self.info = load_heads(path, loaded, self.method)
        self.path = path
        self.budget = budget
        self.max_nodes = budget or max_nodes
        self.policy = None if budget else policy_for(loaded, max_nodes=max_nodes)
        k = self.heads.num_heads
        # bucket d * BINS + b: depth d + 1, head probability in bin b (bin 0 the likeliest);
        # prior: the bin's middle probability, worth a few trials.
        prior = [1.0 - (b + 0.5) / BINS for _ in range(k) for b in range(BINS)]
        self.rates = AcceptanceRates(prior, weight=8.0, decay=0.995, monotone=True, block=BINS)
        self.reader = None
        # The LM head restricted to the draft vocabulary (FR-Spec's frequency-ranked drafting):
        # on a CPU the full product costs a fifth of a small model's forward per head.
        weight, bias = self.lm_head.weight, getattr(self.lm_head, "bias", None)
        rank = self.heads.vocab_rank
        self.vocab: torch.Tensor | None = None  # [N] token ids, or None for the whole vocabulary
        if draft_vocab and rank is not None and draft_vocab < weight.shape[0]:
            self.vocab = rank[:draft_vocab]
            weight = weight[self.vocab]
            bias = None if bias is None else bias[self.vocab]
        self._head_weight, self._head_bias = weight.detach(), None if bias is None else bias.detach()
        self.top_k = min(top_k, self._head_weight.shape[0])
        self.head = stop_head_for(stop_head)  # the SpecDec++ stop rule's predictor, shared
        self.stop_threshold = stop_threshold
        self._walk: StopWalk | None = None  # per proposal: the stop rule along the top-1 path
        self._path: dict[int, int] = {}  # per proposal: top-1 path node -> its depth

    def _start_walk(self) -> StopWalk | None:
        """A new proposal: a fresh stop-rule walk (None without a stop head), no path yet."""
        self._walk = StopWalk(self.head, self.stop_threshold) if self.head is not None else None
        self._path = {}
        return self._walk

    def attach(self, reader) -> None:
        self.reader = reader

    def _bucket(self, depth: int, p: float) -> int:
        return (depth - 1) * BINS + min(BINS - 1, int((1.0 - p) * BINS))

    def _top(self, hidden: torch.Tensor, k: int) -> tuple[list, list, torch.Tensor]:
        """The ``k`` likeliest tokens and their probabilities (softmax over the draft vocabulary)
        after head outputs ``hidden`` ``[rows, hidden]``: ``(probs, ids, q)``, ``[rows][k]``
        lists and the distributions ``[rows, draft vocab]``."""
        logits = torch.nn.functional.linear(hidden, self._head_weight, self._head_bias).float()
        q = logits.softmax(-1)  # [rows, draft vocab]
        top = torch.topk(q, k, dim=-1)  # [rows, k]
        ids = top.indices if self.vocab is None else self.vocab[top.indices]
        return top.values.tolist(), ids.tolist(), q

    def _finish(self, tokens, parents, probs, tags, start) -> Candidates:
        """Sorted best first, cut at ``max_nodes``; each node's tag ``(bucket, d)``, ``d`` its
        depth if it is on the stop rule's top-1 path, else 0."""
        tokens, parents, probs, order = sort_by_probability(tokens, parents, probs)
        tags = [(tags[i], self._path.get(i, 0)) for i in order]
        n = min(len(tokens), self.max_nodes)
        return Candidates(tokens[:n], parents[:n], probs[:n], tags[:n], 0.0)

    def learn(self, outcome, judged) -> None:
        self.rates.update([(bucket, ok) for (bucket, _), ok in judged])
        if self._walk is not None:
            # the top-1 path nodes judged: depths 1, 2, ... up to the first rejection
            path = [ok for (_, d), ok in sorted(judged, key=lambda j: j[0][1]) if d]
            self._walk.learn(len(path), sum(path))


@register(
    "medusa",
    "Medusa: trained heads on the target's last hidden state, one per future position, verified "
    "as a token tree of their top-k (train with `specdecode train medusa`)",
)
class Medusa(HeadDrafter):
    method = "medusa"

    def __init__(
        self,
        ctx,
        heads: HeadsPath = "",
        top_k: Annotated[int, "tokens taken from each head's distribution", at_least(1)] = 6,
        budget: Budget = 0,
        max_nodes: MaxNodes = 48,
        draft_vocab: DraftVocab = 8192,
        stop_head: StopHead = "none",
        stop_threshold: StopThreshold = 0.7,
    ) -> None:
        super().__init__(ctx, heads, top_k, budget, max_nodes, draft_vocab, stop_head, stop_threshold)

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        start = time.perf_counter()
        depth_limit = min(self.heads.num_heads, max_depth)
        h = self.reader.hidden  # [hidden]
        outs = torch.stack([self.heads.head(k, h) for k in range(depth_limit)])  # [depth_limit, hidden]
        probs, ids, q = self._top(outs, self.top_k)  # [depth_limit][top_k], q [depth_limit, vocab]
        walk = self._start_walk()
        if walk is not None:  # head d's distribution is the same below every node: cap the depth
            depth_limit = next((d for d in range(depth_limit) if not walk.keep(q[d])), depth_limit)
        rates = self.rates.rates
        toks: list[int] = []
        parents: list[int] = []
        est: list[float] = []
        tags: list[int] = []
        # best-first over paths: a node's children are head (depth + 1)'s top tokens
        heap: list[tuple[float, int, int, int, int]] = []  # (-estimate, tie, parent, depth, rank)
        tie = 0

        def push(parent: int, depth: int, base: float) -> None:
            nonlocal tie
            for r in range(self.top_k):
                e = base * rates[self._bucket(depth, probs[depth - 1][r])]
                heapq.heappush(heap, (-e, tie, parent, depth, r))
                tie += 1

        push(-1, 1, 1.0)
        tip = -1  # the top-1 path's deepest node so far
        while heap and len(toks) < self.max_nodes:
            neg, _, parent, depth, r = heapq.heappop(heap)
            node = len(toks)
            if r == 0 and parent == tip:
                self._path[node] = depth
                tip = node
            toks.append(ids[depth - 1][r])
            parents.append(parent)
            est.append(-neg)
            tags.append(self._bucket(depth, probs[depth - 1][r]))
            if depth < depth_limit:
                push(node, depth + 1, -neg)
        return self._finish(toks, parents, est, tags, start)


class LevelDrafter(HeadDrafter):
    """Heads whose trees grow level by level, the ``width`` likeliest nodes of a level expanded
    with one batched head product (hydra, clover)."""

    def __init__(
        self,
        ctx,
        heads: HeadsPath = "",
        top_k: Annotated[int, "children taken from each expanded node's head", at_least(1)] = 4,
        width: Annotated[int, "nodes expanded per level (one batched head product each)", at_least(1)] = 2,
        budget: Budget = 0,
        max_nodes: MaxNodes = 48,
        draft_vocab: DraftVocab = 8192,
        stop_head: StopHead = "none",
        stop_threshold: StopThreshold = 0.7,
    ) -> None:
        super().__init__(ctx, heads, top_k, budget, max_nodes, draft_vocab, stop_head, stop_threshold)
        self.width = width

    def _add_children(self, depth, expanded, top_p, top_ids, rates, tree) -> list[tuple[int, float, object]]:
        """Append every expanded node's top-k children to ``tree`` (tokens, parents, estimates,
        tags); returns ``(node, estimate, what the child carries on)`` for each, the carried
        value taken from its parent's ``expanded`` entry ``(node, estimate, carried)``."""
        toks, parents, est, tags = tree
        children = []
        for (node, base, carried), ps, ids in zip(expanded, top_p, top_ids, strict=True):
            for p, t in zip(ps, ids, strict=True):
                bucket = self._bucket(depth, p)
                e = base * rates[bucket]
                toks.append(t)
                parents.append(node)
                est.append(e)
                tags.append(bucket)
                children.append((len(toks) - 1, e, carried))
        return children

    def _stop_here(self, walk, tip, nodes, q) -> tuple[bool, int | None]:
        """The stop rule at a level whose expanded ``nodes`` have the heads' distributions ``q``
        ``[w, vocab]``: ``(stop, row)``, stop when the children of this level are past the depth
        cap; ``row``: the top-1 path's ``tip`` among ``nodes`` (None: the walk has ended)."""
        if walk is None or tip is None or tip not in nodes:
            return False, None
        row = nodes.index(tip)
        return not walk.keep(q[row]), row

    def _follow(self, row, children, depth) -> int | None:
        """The top-1 path's next node: the first child of ``row`` (children come ``top_k`` per
        expanded node, likeliest first)."""
        if row is None:
            return None
        tip = children[row * self.top_k][0]
        self._path[tip] = depth
        return tip


@register(
    "hydra",
    "Hydra: trained heads on the target's last hidden state, each also seeing the tokens drafted "
    "before it; a token tree grown level by level (train with `specdecode train hydra`)",
)
class Hydra(LevelDrafter):
    method = "hydra"

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        start = time.perf_counter()
        depth_limit = min(self.heads.num_heads, max_depth)
        h = self.reader.hidden  # [hidden]
        rates = self.rates.rates
        toks: list[int] = []
        parents: list[int] = []
        est: list[float] = []
        tags: list[int] = []
        embed_root = self.embed(torch.tensor([tokens[-1]], device=h.device))  # [1, hidden]
        # the level being expanded: (node, estimate, embeddings of the root and the path [d, hidden])
        level = [(-1, 1.0, embed_root)]
        walk, tip = self._start_walk(), -1  # the stop rule along the top-1 path, and its tip
        for depth in range(1, depth_limit + 1):
            prev = torch.stack([e for _, _, e in level])  # [w, depth, hidden]
            out = self.heads.head(depth - 1, h.expand(len(level), -1), prev)  # [w, hidden]
            top_p, top_ids, q = self._top(out, self.top_k)  # [w][top_k], q [w, vocab]
            stop, row = self._stop_here(walk, tip, [n for n, _, _ in level], q)
            if stop:
                break
            children = self._add_children(depth, level, top_p, top_ids, rates, (toks, parents, est, tags))
            tip = self._follow(row, children, depth)
            if depth == depth_limit or len(toks) >= self.max_nodes:
                break
            children.sort(key=lambda c: -c[1])
            level = []
            for node, e, path_emb in children[: self.width]:
                emb = self.embed(torch.tensor([toks[node]], device=h.device))  # [1, hidden]
                level.append((node, e, torch.cat([path_emb, emb])))
        return self._finish(toks, parents, est, tags, start)


@register(
    "clover",
    "Clover (simplified): trained heads chained by a regressive connection, each seeing the "
    "previous head's state and the token drafted above it; a token tree grown level by level "
    "(train with `specdecode train clover`)",
)
class Clover(LevelDrafter):
    method = "clover"

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        depth_limit = min(self.heads.num_heads, max_depth)
        h = self.reader.hidden  # [hidden]
        rates = self.rates.rates
        toks: list[int] = []
        parents: list[int] = []
        est: list[float] = []
        tags: list[int] = []
        # the level being expanded: (node, estimate, the state above it, its token's embedding)
        root = self.embed(torch.tensor([tokens[-1]], device=h.device))[0]  # [hidden]
        level = [(-1, 1.0, h, root)]
        walk, tip = self._start_walk(), -1  # the stop rule along the top-1 path, and its tip
        for depth in range(1, depth_limit + 1):
            states = self.heads.step(
                depth - 1, torch.stack([s for _, _, s, _ in level]), torch.stack([e for _, _, _, e in level])
            )  # [w, hidden]
            top_p, top_ids, q = self._top(states, self.top_k)  # [w][top_k], q [w, vocab]
            stop, row = self._stop_here(walk, tip, [n for n, _, _, _ in level], q)
            if stop:
                break
            expanded = [(node, base, state) for (node, base, _, _), state in zip(level, states, strict=True)]
            children = self._add_children(depth, expanded, top_p, top_ids, rates, (toks, parents, est, tags))
            tip = self._follow(row, children, depth)
            if depth == depth_limit or len(toks) >= self.max_nodes:
                break
            children.sort(key=lambda c: -c[1])
            chosen = children[: self.width]
            embs = self.embed(torch.tensor([toks[n] for n, _, _ in chosen], device=h.device))  # [w, hidden]
            level = [(n, e, s, emb) for (n, e, s), emb in zip(chosen, embs, strict=True)]
        return self._finish(toks, parents, est, tags, 0.0)
