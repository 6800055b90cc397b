"""Speculation under a constraint: one generation's grammar state beside the decoding loop.

A :class:`Guide` holds an llguidance matcher at the committed tokens and does four things
for :class:`specdecode.engine.Decoder`:

- **Prune before scoring.** The drafter's tree keeps only grammar-valid paths (each node's
  token allowed after its parent's path; nothing below an EOS), so no forward is spent on a
  forbidden token. A drafter that lists candidates (:class:`CandidateDrafter`, ``hybrid``) is
  pruned *before* its budget cut, so the budget goes to valid nodes; any other drafter's tree
  is pruned after it is proposed, and it learns from the outcome mapped back onto its own tree.
- **Jump-forward.** The tokens the grammar forces (llguidance's fast-forward tokens) after the
  root and after the pruned tree's first path (the drafter's best guess) are appended as free
  draft nodes: verified in
  the same forward, accepted when the masked target agrees (always, where only one token is
  allowed), so a forced run costs no forward of its own.
- **Masked verification.** Every row the verifier reads is the target's distribution with
  the grammar's mask applied (disallowed tokens at ``-inf``): greedy output is plain greedy
  decoding with the mask at every step, token for token, and sampling draws from the locally
  masked distribution ``p'(x) ∝ p(x) [x allowed]`` (temperature, top-k and top-p applied to the
  masked logits). Under greedy decoding (and Gumbel sampling without top-k/top-p) the mask is
  computed only where the target's own choice is forbidden: an allowed argmax is the masked
  argmax. Otherwise masks are computed for every node while pruning.
- **Advance and stop.** The matcher consumes the committed tokens; EOS is allowed only where
  the grammar accepts; a state where no token is allowed ends the generation
  (``finish_reason`` ``"constraint"``).
"""

from __future__ import annotations

import numpy as np
import torch

from specdecode.drafters.base import CandidateDrafter, Candidates, Drafter, StepOutcome
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.tree import DraftTree
from specdecode.verify import MultiDraft, Verdict, verify

MAX_FORCED = 32  # forced tokens appended below one node (a long enum literal is still few tokens)


class Guide:
    """One generation's grammar state (see the module docstring)."""

    def __init__(self, constraint, eos: set[int], sampling: SamplingConfig) -> None:
        self.matcher = constraint.matcher()
        self.vocab = constraint.tokenizer.vocab_size
        self.eos = set(eos)
        # llguidance always has an end token; where the model has none it is an ordinary token
        self.not_eos = [t for t in constraint.tokenizer.eos_tokens if t not in self.eos]
        self.jump_forward = constraint.jump_forward
        self.sampling = sampling
        # Masks only where the target's choice is forbidden (see the module docstring).
        self.lazy = sampling.greedy or (sampling.gumbel and sampling.top_k == 0 and sampling.top_p == 1.0)
        self.finished: str | None = None  # "constraint" once no token is allowed
        self.ended = False  # EOS committed: the grammar has nothing more to say
        self._masks: list[torch.Tensor | None] | None = None  # [n + 1] rows of the tree (eager mode)
        self._n_own = 0  # nodes of the scored tree that the drafter proposed (the rest are forced)
        self._shaped: DraftTree | None = None  # the last tree made for scoring
        self.forced = 0  # forced tokens drafted (jump-forward), for the figures
        self.forced_accepted = 0

    # ---- masks ------------------------------------------------------------------------------
    def allowed(self) -> torch.Tensor:
        """The mask at the matcher's state: bool ``[vocab]`` (True = allowed)."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        mask = torch.from_numpy(bits[: self.vocab].astype(bool))
        mask[self.not_eos] = False
        return mask

    def allows(self, token: int) -> bool:
        if token in self.not_eos:
            return False
        if token in self.eos:  # llguidance's validate_tokens does not count EOS
            return self.matcher.is_accepting()
        return self.matcher.validate_tokens([token]) == 1

    def _consume(self, token: int) -> bool:
        """Advance by ``token`` (EOS is never consumed: nothing follows it)."""
        return token in self.eos or self.matcher.try_consume_tokens([token]) == 1

    @staticmethod
    def masked(row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``row`` ``[width]`` with the tokens ``mask`` ``[vocab]`` forbids (and any past it) at -inf."""
        width = row.shape[-1]
        keep = torch.zeros(width, dtype=torch.bool)
        n = min(width, mask.shape[0])
        keep[:n] = mask[:n]
        return row.masked_fill(~keep.to(row.device), float("-inf"))

    def first(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The prefill's logits ``[vocab]`` masked for the first token (None: nothing allowed)."""
        mask = self.allowed()
        if not mask.any():
            self.finished = "constraint"
            return None
        return self.masked(logits, mask)

    def start(self, token: int) -> None:
        """The first token was committed."""
        self._advance([token])

    # ---- pruning and jump-forward -----------------------------------------------------------
    def _kept(self, tokens: list[int], parents: list[int]) -> list[int]:
        """Indices of the nodes whose whole path is allowed, in order (a subtree closed upwards)."""
        kids: list[list[int]] = [[] for _ in range(len(tokens) + 1)]
        for i, p in enumerate(parents):
            kids[p + 1].append(i)
        ok = [False] * len(tokens)
        m = self.matcher
        stack: list[tuple[int, int]] = [(-1, 0)]  # (node, next child position); the matcher is at node
        while stack:
            node, k = stack[-1]
            children = kids[node + 1]
            if k == len(children):
                stack.pop()
                if node >= 0:
                    m.rollback(1)
                continue
            stack[-1] = (node, k + 1)
            c = children[k]
            t = tokens[c]
            if t in self.eos:
                ok[c] = m.is_accepting()  # a leaf: nothing is drafted after EOS
            elif t not in self.not_eos and m.try_consume_tokens([t]) == 1:
                ok[c] = True
                stack.append((c, 0))
        return [i for i in range(len(tokens)) if ok[i]]

    def _shape(self, own: DraftTree, kept: list[int], max_depth: int) -> tuple[DraftTree, list[int]]:
        """The tree to score: ``own``'s ``kept`` nodes, then the forced runs (jump-forward);
        in eager mode also every row's mask, and draft rows renormalized to the allowed tokens.
        Returns the tree and, for each of its first nodes, the ``own`` node it is."""
        sampled = own.draft_probs is not None and not self.sampling.greedy
        if sampled and kept and not own.is_chain and (len(kept) < len(own) or own.without_replacement):
            # Sampled siblings thinned by the grammar (or drawn without replacement, whose
            # survivors would not be such a draw from the allowed tokens) are no longer a sample
            # from q: keep the first child at each level (one draw each), a chain whose rows
            # renormalize to the allowed tokens exactly.
            first = set(_first_chain(own.parents))
            kept = [o for o in kept if o in first]
        multi = isinstance(own, MultiDraft) and len(kept) == len(own)  # SpecTr's draws, all allowed
        index = {o: i for i, o in enumerate(kept)}
        tokens = [own.tokens[o] for o in kept]
        parents = [index[own.parents[o]] if own.parents[o] >= 0 else -1 for o in kept]
        probs = own.draft_probs[kept] if own.draft_probs is not None and kept else None
        n_own = self._n_own = len(tokens)
        eager = not self.lazy
        masks: list[torch.Tensor | None] = [None] * (n_own + 1)
        if not (eager or self.jump_forward):
            self._masks = None
            self._shaped = _tree(tokens, parents, probs, own if multi else None)
            return self._shaped, kept
        kids: list[list[int]] = [[] for _ in range(n_own + 1)]
        for i, p in enumerate(parents):
            kids[p + 1].append(i)
        m = self.matcher
        if eager:  # every row's mask: visit each node with the matcher at its state
            stack: list[tuple[int, int]] = [(-1, 0)]
            while stack:
                node, k = stack[-1]
                if k == 0:
                    masks[node + 1] = self.allowed() if node < 0 or tokens[node] not in self.eos else None
                children = kids[node + 1]
                if k == len(children) or (node >= 0 and tokens[node] in self.eos):
                    stack.pop()
                    if node >= 0 and tokens[node] not in self.eos:
                        m.rollback(1)
                    continue
                stack[-1] = (node, k + 1)
                c = children[k]
                if tokens[c] not in self.eos:
                    m.consume_token(tokens[c])
                stack.append((c, 0))
        # Forced runs below the root and below the end of the drafter's first path (its best
        # guess: candidates come best first), not below every leaf: each forced node is scored.
        grafts: list[tuple[int, list[int]]] = []  # (node, forced tokens below it)
        if self.jump_forward and not multi:  # (a multi-draft's counts have no room for forced nodes)
            chain = _first_chain(parents)
            for node, path in ((-1, []), (chain[-1] if chain else None, chain)):
                if node is None or (path and tokens[path[-1]] in self.eos):
                    continue
                room = min(max_depth - len(path), MAX_FORCED)
                if room <= 0:
                    continue
                for i in path:
                    m.consume_token(tokens[i])
                forced = m.compute_ff_tokens()[:room]
                if path:
                    m.rollback(len(path))
                if forced:
                    grafts.append((node, forced))
        if eager and probs is not None:
            rows = [masks[p + 1] for p in parents]  # each node was drawn after its parent's path
            allowed = torch.stack([self._fit(r, probs.shape[-1]) for r in rows]).to(probs.device)
            probs = probs * allowed
            probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-30)
        for node, forced in grafts:
            node = self._graft(tokens, parents, kids, node, forced, masks if eager else None)
        self.forced += len(tokens) - n_own
        if probs is not None and len(tokens) > n_own:
            # a forced node is a deterministic draft: q one-hot at its token
            extra = torch.zeros(len(tokens) - n_own, probs.shape[-1], device=probs.device, dtype=probs.dtype)
            extra[torch.arange(len(tokens) - n_own), torch.tensor(tokens[n_own:])] = 1.0
            probs = torch.cat([probs, extra])
        self._masks = masks if eager else None
        self._shaped = _tree(tokens, parents, probs, own if multi else None)
        return self._shaped, kept

    def _graft(self, tokens, parents, kids, node, forced, masks) -> int:
        """Append the ``forced`` run below ``node``, merging with children that hold the same token."""
        m = self.matcher
        path = [] if node < 0 else _path(parents, node)
        for t in path:
            m.consume_token(tokens[t])
        consumed = 0
        for t in forced:
            same = [c for c in kids[node + 1] if tokens[c] == t]
            if same:
                node = same[0]
            else:
                tokens.append(t)
                parents.append(node)
                kids[node + 1].append(len(tokens) - 1)
                kids.append([])
                node = len(tokens) - 1
            if not m.consume_token(t):  # cannot happen for a forced token; stop grafting if it does
                break
            consumed += 1
            if masks is not None:
                while len(masks) < len(tokens) + 1:
                    masks.append(None)
                if masks[node + 1] is None:
                    masks[node + 1] = self.allowed()
        m.rollback(consumed + len(path))
        return node

    @staticmethod
    def _fit(mask: torch.Tensor | None, width: int) -> torch.Tensor:
        out = torch.ones(width, dtype=torch.float32)
        if mask is not None:
            out.zero_()
            n = min(width, mask.shape[0])
            out[:n] = mask[:n].float()
        return out

    # ---- verification -----------------------------------------------------------------------
    def verify(
        self,
        tree: DraftTree,
        logits: torch.Tensor,  # [n + 1, vocab_size]
        cfg: SamplingConfig,
        gen: torch.Generator | None = None,
        *,
        noise=None,
        position: int = 0,
    ) -> Verdict:
        """:func:`specdecode.verify.verify` with the grammar's mask on every row it reads; the
        matcher advances by the committed tokens."""
        if not self.lazy:
            if tree is not self._shaped:  # scored without a proposal (no room left): its masks now
                tree = self._shape(tree, self._kept(tree.tokens, tree.parents), 0)[0]
            masks = self._masks
            rows = [
                self.masked(logits[r], masks[r]) if masks is not None and masks[r] is not None else logits[r]
                for r in range(len(tree) + 1)
            ]
            dead = {r for r in range(len(rows)) if not torch.isfinite(rows[r]).any()}
            for r in dead:  # never sampled from: the path ends there without a bonus token
                rows[r] = logits[r]
            verdict = verify(tree, torch.stack(rows), cfg, gen, noise=noise, position=position)
            if (verdict.path[-1] + 1 if verdict.path else 0) in dead:
                verdict = Verdict(verdict.path, verdict.tokens[: len(verdict.path)])
                self.finished = "constraint"
            self._count(tree, verdict)
            self._advance(verdict.tokens)
            return verdict
        return self._walk(tree, logits, cfg, noise, position)

    def _walk(self, tree, logits, cfg, noise, position) -> Verdict:
        """Greedy (or Gumbel) walk: the target's choice per row, replaced by the masked choice
        only where the grammar forbids it; the matcher follows the accepted path."""
        if cfg.greedy:
            best = logits.argmax(-1).tolist()  # [n + 1]
        else:
            rows = [position] + [position + d for d in tree.depths()]
            best = noise.choices(target_probs(logits, cfg), rows)
        node, path, tokens = -1, [], []
        while True:
            want = best[node + 1]
            if not self.allows(want):
                mask = self.allowed()
                if not mask.any():
                    self.finished = "constraint"
                    break
                row = self.masked(logits[node + 1], mask)
                if cfg.greedy:
                    want = int(row.argmax())
                else:
                    depth = len(path)
                    want = noise.choices(target_probs(row[None], cfg), [position + depth])[0]
            tokens.append(want)
            child = next((c for c in tree.children(node) if tree.tokens[c] == want), None)
            if want in self.eos:
                self.ended = True
                if child is not None:
                    path.append(child)
                break
            self.matcher.consume_token(want)
            if child is None:  # the bonus (or recovered) token
                break
            path.append(child)
            node = child
        verdict = Verdict(path, tokens)
        self._count(tree, verdict)
        return verdict

    def _count(self, tree: DraftTree, verdict: Verdict) -> None:
        self.forced_accepted += sum(1 for i in verdict.path if i >= self._n_own)

    def _advance(self, tokens: list[int]) -> None:
        for t in tokens:
            if t in self.eos:
                self.ended = True
                return
            if self.matcher.try_consume_tokens([t]) != 1:
                self.finished = "constraint"  # cannot happen for a masked choice; stop safely
                return

    # ---- the drafter's view -----------------------------------------------------------------
    def wrap(self, drafter) -> GuidedDrafter:
        return GuidedDrafter(drafter, self)


class GuidedDrafter(Drafter):
    """A drafter (or a Predicted Outputs source) seen through a :class:`Guide` for one generation:
    its proposals pruned and extended, its outcomes mapped back onto what it proposed."""

    def __init__(self, inner, guide: Guide) -> None:
        self.inner, self.guide = inner, guide
        self._own: DraftTree | None = None  # the drafter's last proposal
        self._kept: list[int] = []  # its nodes that were scored, in the scored tree's order
        self._scored: DraftTree | None = None  # the tree made of them (and forced runs)

    def __getattr__(self, name):  # what the loop asks of drafters (reads_target, method_ran, ...)
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        g, inner = self.guide, self.inner
        if isinstance(inner, CandidateDrafter) and type(inner).propose is CandidateDrafter.propose:
            # Prune the candidates before the budget cut, so the budget goes to valid nodes.
            own = inner.propose(tokens, max_depth, where=lambda c: _filter(c, g._kept(c.tokens, c.parents)))
            kept = list(range(len(own)))
        else:
            own = inner.propose(tokens, max_depth)
            kept = g._kept(own.tokens, own.parents)
        tree, kept = g._shape(own, kept, max_depth)
        self._own, self._kept, self._scored = own, kept, tree
        return tree

    def observe(self, outcome: StepOutcome) -> None:
        self.inner.observe(self._view(outcome))

    def begin(self, prompt_ids, sampling) -> None:
        self.inner.begin(prompt_ids, sampling)

    def finish(self) -> None:
        self.inner.finish()

    def _view(self, outcome: StepOutcome) -> StepOutcome:
        """The outcome on the drafter's own tree: its scored nodes' rows, a pruned node given
        the row of its nearest scored ancestor (it was never scored), the accepted path cut at
        the first forced node; the committed tokens as they are."""
        own, kept = self._own, self._kept
        if own is None or outcome.tree is not self._scored:  # the loop scored no proposal of ours
            return outcome
        n_scored = len(outcome.tree)
        if kept == list(range(len(own))) and n_scored == len(own):
            return outcome
        where = {o: i for i, o in enumerate(kept)}
        rows = [0]
        for o in range(len(own)):
            a = o
            while a >= 0 and a not in where:
                a = own.parents[a]
            rows.append(where[a] + 1 if a >= 0 else 0)
        logits = outcome.logits.index_select(0, torch.tensor(rows, device=outcome.logits.device))
        path = []
        for i in outcome.verdict.path:
            if i >= len(kept):
                break
            path.append(kept[i])
        verdict = Verdict(path, outcome.verdict.tokens)
        return StepOutcome(own, logits, verdict, outcome.tokens, outcome.forward_seconds, outcome.context)


def _filter(c: Candidates, keep: list[int]) -> Candidates:
    index = {o: i for i, o in enumerate(keep)}
    return Candidates(
        [c.tokens[o] for o in keep],
        [index[c.parents[o]] if c.parents[o] >= 0 else -1 for o in keep],
        [c.probs[o] for o in keep],
        [c.tags[o] for o in keep],
        c.cost_per_node,
    )


def _tree(tokens, parents, probs, multi: MultiDraft | None) -> DraftTree:
    if multi is not None:
        return MultiDraft(tokens, parents, probs, counts=multi.counts)
    return DraftTree(tokens, parents, probs)


def _first_chain(parents: list[int]) -> list[int]:
    chain, node = [], -1
    while True:
        nxt = next((i for i, p in enumerate(parents) if p == node), None)
        if nxt is None:
            return chain
        chain.append(nxt)
        node = nxt


def _path(parents: list[int], node: int) -> list[int]:
    out = []
    while node >= 0:
        out.append(node)
        node = parents[node]
    return out[::-1]
