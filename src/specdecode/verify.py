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
Leviathan et al. / Chen et al. speculative sampling there.
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
    if cfg.greedy:
        return verify_greedy(tree, logits)
    if noise is not None:
        rows = [position] + [position + d for d in tree.depths()]
        return _walk(tree, noise.choices(target_probs(logits, cfg), rows))
    return verify_sampling(tree, target_probs(logits, cfg), gen)


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:  # logits: [n + 1, vocab_size]
    return _walk(tree, logits.argmax(-1).tolist())


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
