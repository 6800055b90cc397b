"""One verifier for every drafter: chains and trees, greedy and sampling.

Notation of the papers: ``p`` is the target distribution, ``q`` the draft's. Each step commits

- *accepted* tokens: draft nodes along one root-to-node path that the target agrees with;
- one more token from the target itself: the *bonus* token when the path ends at a node the
  target accepted in full, or the *recovered* token sampled from the residual
  ``norm(max(0, p - q))`` when the last sibling was rejected. Either way the target's forward
  already produced the distribution, so every step commits at least one token.

Greedy: a child is accepted when its token is the target's argmax. Sampling with the Gumbel
coupling (:class:`specdecode.sampling.GumbelNoise`): the same walk, with the target's choice at
each row being ``argmax(log p + g)`` for the noise of that row's sequence position. Sampling: recursive
rejection sampling over siblings (SpecInfer's multi-draft speculative sampling; with
``without_replacement`` Recursive Speculative Decoding's variant), which keeps the output
distribution exactly the target's. A chain is the tree with one child per node, so this is
Leviathan et al. / Chen et al. speculative sampling there. A :class:`MultiDraft` (``k`` drafts
drawn i.i.d. from ``q``) is verified with SpecTr's K-SEQ selection instead (:func:`verify_kseq`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdecode.sampling import GumbelNoise, SamplingConfig, sample, target_probs
from specdecode.tree import DraftTree


@dataclass
class Verdict:
    path: list[int]  # accepted node indices, root's child first
    tokens: list[int]  # the accepted tokens, then the bonus / recovered token

    @property
    def accepted(self) -> int:
        return len(self.path)


def verify(
    tree: DraftTree,  # n nodes
    logits: torch.Tensor,  # [n + 1, vocab_size]: after the root, then after each node
    cfg: SamplingConfig,
    gen: torch.Generator | None = None,
    *,
    noise: GumbelNoise | None = None,
    position: int = 0,
) -> Verdict:
    """Accept the longest valid path of ``tree`` given target ``logits`` ``[n + 1, vocab]``.

    With ``noise`` (the Gumbel coupling), ``position`` is the sequence index of the token that
    follows the root; a node at depth ``d`` is at ``position + d``.
    """
    walk = _walk_merged if isinstance(tree, MultiDraft) else _walk
    if cfg.greedy:
        return walk(tree, logits.argmax(-1).tolist())
    if noise is not None:
        rows = [position] + [position + d for d in tree.depths()]
        return walk(tree, noise.choices(target_probs(logits, cfg), rows))
    if isinstance(tree, MultiDraft):
        return verify_kseq(tree, target_probs(logits, cfg), gen, tree.counts)
    return verify_sampling(tree, target_probs(logits, cfg), gen)


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:  # logits: [n + 1, vocab_size]
    return _walk(tree, logits.argmax(-1).tolist())


def greedy_path(tree: DraftTree, answer: list[int]) -> list[int]:
    """The nodes greedy verification accepts when the target's choices are already known:
    ``answer`` holds the tokens it writes after the root (a replay over a finished answer).
    Only the choices after accepted nodes are read, and those lie on the answer."""
    best = [answer[0]] + [answer[d] if d < len(answer) else -1 for d in tree.depths()]
    return _walk(tree, best).path


def _walk(tree: DraftTree, best: list[int]) -> Verdict:
    """Follow the children that hold the target's choice ``best`` ``[n + 1]`` (after the root,
    after each node) as deep as they go; the choice after the last one is the bonus token."""
    node, path = -1, []
    while True:
        want = best[node + 1]
        for child in tree.children(node):
            if tree.tokens[child] == want:
                path.append(child)
                node = child
                break
        else:
            break
    return Verdict(path, [tree.tokens[i] for i in path] + [best[node + 1]])


def _walk_merged(tree: DraftTree, best: list[int]) -> Verdict:
    """:func:`_walk` for trees whose siblings may repeat a token (:class:`MultiDraft`): below the
    accepted prefix, the children of *every* node holding it are candidates."""
    held = [-1]  # nodes holding the accepted prefix
    while True:
        want = best[held[0] + 1]
        nxt = [c for node in held for c in tree.children(node) if tree.tokens[c] == want]
        if not nxt:
            break
        held = nxt
    path = tree.path_to(held[0]) if held[0] >= 0 else []
    return Verdict(path, [tree.tokens[i] for i in path] + [best[held[0] + 1]])


def verify_sampling(tree: DraftTree, p_all: torch.Tensor, gen: torch.Generator | None) -> Verdict:
    """Recursive rejection sampling; ``p_all`` ``[n + 1, vocab]`` holds the target's probabilities."""
    node, path = -1, []
    while True:
        p = p_all[node + 1]  # [vocab_size]
        q = None  # [vocab_size]: the draft row of this node's children
        chosen = None
        for child in tree.children(node):
            x = tree.tokens[child]
            if tree.draft_probs is None:
                q_x = 1.0  # deterministic draft: q is one-hot at x
            else:
                if q is None:  # siblings share their parent's draft row
                    q = tree.draft_probs[child].float()
                q_x = float(q[x])
            p_x = float(p[x])
            # accept x with probability min(1, p(x) / q(x))
            if q_x > 0 and float(torch.rand((), generator=gen, device=p.device)) * q_x < p_x:
                chosen = child
                break
            # rejected: the next sibling is tested against the residual norm(max(0, p - q))
            if tree.draft_probs is None:
                residual = p.clone()
                residual[x] = 0
            else:
                residual = (p - q).clamp_(min=0)
                if tree.without_replacement:
                    q = q.clone()
                    q[x] = 0
                    q = q / q.sum() if q.sum() > 0 else q
            total = residual.sum()
            if total > 0:  # zero only through rounding when p == q; keep p then
                p = residual / total
        if chosen is None:
            return Verdict(path, [tree.tokens[i] for i in path] + [sample(p, gen)])
        path.append(chosen)
        node = chosen


# ---- SpecTr: k i.i.d. drafts, K-SEQ selection ----------------------------------------------
@dataclass
class MultiDraft(DraftTree):
    """Draft sequences drawn independently from ``q`` (SpecTr), verified with K-SEQ.

    The siblings below a node are i.i.d. draws from that node's draft row, *with duplicates*:
    either one node per draw (``counts`` ``None``; e.g. ``k`` separate chains from the root,
    whose equal prefixes the verifier treats as one) or a trie with ``counts[i]``, the number of
    draws that passed through node ``i``. :func:`verify` sends such a tree to
    :func:`verify_kseq` when sampling with the residual coupling.
    """

    counts: list[int] | None = None  # [n]: draws through each node (None: one per node)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.counts is not None and (
            len(self.counts) != len(self.tokens) or any(c < 1 for c in self.counts)
        ):
            raise ValueError("counts must hold one count >= 1 per node")


def kseq_rho(p: torch.Tensor, q: torch.Tensor, k: int) -> tuple[float, float]:
    """SpecTr's ``rho`` for ``k`` i.i.d. drafts from ``q`` (``[vocab]`` each) and target ``p``.

    With ``beta(rho) = sum_x min(q(x), p(x) / rho)``, K-SEQ accepts a draft ``x`` with
    ``min(1, p(x) / (rho q(x)))``; its residual is a distribution as long as
    ``1 - (1 - beta)^k <= rho beta``. Both sides are monotone in ``rho``, so the smallest such
    ``rho`` in ``[1, k]`` (the best acceptance, ``1 - (1 - beta)^k``) is found on the breakpoints
    ``rho = p(x) / q(x)``, then by bisection inside one segment. Returns ``(rho, beta)``.
    """
    if k <= 1:
        return 1.0, float(torch.minimum(p, q).sum())
    p, q = p.double(), q.double()
    keep = q > 0
    ratio, order = torch.sort(p[keep] / q[keep])  # [m]
    p_sorted, q_sorted = p[keep][order], q[keep][order]
    p_low = torch.cumsum(p_sorted, 0)  # p-mass of the ratios <= ratio[j]
    q_high = q_sorted.sum() - torch.cumsum(q_sorted, 0)  # q-mass of the ratios > ratio[j]

    def h(rho: float, a: float, b: float) -> tuple[float, float]:  # beta = a / rho + b
        beta = a / rho + b
        return rho * beta - 1 + (1 - beta) ** k, beta

    # h at each breakpoint inside (1, k): the first where h >= 0 closes the segment of the root
    inside = (ratio > 1) & (ratio < k)
    beta_at = p_low / ratio.clamp(min=1e-300) + q_high
    h_at = ratio * beta_at - 1 + (1 - beta_at) ** k
    hits = (inside & (h_at >= 0)).nonzero().flatten()
    hi = float(ratio[hits[0]]) if len(hits) else float(k)
    below = (ratio < hi).nonzero().flatten()
    lo = max(1.0, float(ratio[below[-1]])) if len(below) else 1.0
    j = int((ratio <= lo).sum())  # the ratios at or below the segment: their p counts, scaled
    a = float(p_low[j - 1]) if j else 0.0
    b = float(q_high[j - 1]) if j else float(q_sorted.sum())
    for _ in range(45):  # h(lo) < 0 <= h(hi); (k - 1) / 2**45 is far below float32 noise
        mid = (lo + hi) / 2
        if h(mid, a, b)[0] >= 0:
            hi = mid
        else:
            lo = mid
    return hi, h(hi, a, b)[1]


def kseq_residual(p: torch.Tensor, q: torch.Tensor, k: int, rho: float, beta: float) -> torch.Tensor:
    """K-SEQ's distribution after ``k`` rejected drafts ``[vocab]``:
    ``norm(p - min(q, p / rho) (1 - (1 - beta)^k) / beta)``."""
    if beta <= 0:
        return p
    accepted = torch.minimum(q, p / rho) * ((1 - (1 - beta) ** k) / beta)  # P(accept and be x)
    residual = (p - accepted).clamp_(min=0)
    total = residual.sum()
    return residual / total if total > 0 else p


def verify_kseq(tree: DraftTree, p_all: torch.Tensor, gen: torch.Generator | None, counts=None) -> Verdict:
    """SpecTr's K-SEQ (Sun et al. 2023) down a tree of i.i.d. drafts; ``p_all`` ``[n + 1, vocab]``.

    At each depth the candidates are the draws below the accepted prefix (all nodes holding it,
    each ``counts[i]`` times), taken in a uniformly random order: the draws are exchangeable,
    so a random order of their multiset is again an i.i.d. sequence from ``q``. Each is accepted
    with ``min(1, p(x) / (rho q(x)))``; the first accepted one extends the path, and when none
    is, the token is drawn from :func:`kseq_residual`. The output follows ``p`` exactly.
    Deterministic drafts (no ``draft_probs``) go to :func:`verify_sampling`.
    """
    if tree.draft_probs is None:
        return verify_sampling(tree, p_all, gen)
    held, tokens = [-1], []  # nodes holding the accepted prefix (the root first), its tokens
    while True:
        p = p_all[held[0] + 1]  # [vocab_size]
        kids = [c for node in held for c in tree.children(node)]
        draws = [c for c in kids for _ in range(counts[c] if counts else 1)]
        if not draws:
            break
        q = tree.draft_probs[kids[0]].float()  # [vocab_size]: the draft row of every candidate
        rho, beta = kseq_rho(p, q, len(draws))
        order = torch.randperm(len(draws), generator=gen, device=gen.device if gen else "cpu")
        chosen = None
        for i in order.tolist():
            x = tree.tokens[draws[i]]
            # accept x with probability min(1, p(x) / (rho q(x)))
            if float(torch.rand((), generator=gen, device=p.device)) * rho * float(q[x]) < float(p[x]):
                chosen = x
                break
        if chosen is None:
            tokens.append(sample(kseq_residual(p, q, len(draws), rho, beta), gen))
            return Verdict(tree.path_to(held[0]) if held[0] >= 0 else [], tokens)
        held = [c for c in kids if tree.tokens[c] == chosen]
        tokens.append(chosen)
    tokens.append(sample(p, gen))  # every draft accepted: the bonus token
    return Verdict(tree.path_to(held[0]) if held[0] >= 0 else [], tokens)
