"""Draft trees: the one shape every drafter proposes and the verifier checks.

A draft tree hangs below the *root*, the last committed token, whose KV entry is not yet in
the target's cache. Node ``i`` holds ``tokens[i]`` and its parent ``parents[i]`` (``-1`` for
the root). Parents come before children (``parents[i] < i``), so a chain is simply
``parents = [-1, 0, 1, ...]`` and needs no code path of its own.

The target scores ``[root] + tokens`` in one forward pass. Row ``0`` of its output is the
distribution after the root; row ``i + 1`` the distribution after node ``i``. Masks and
positions are pure functions of ``parents`` (see :func:`tree_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch


@dataclass
class DraftTree:
    """Draft tokens with their parents, in topological order.

    ``draft_probs`` (optional, ``[n, vocab]``): row ``i`` is the draft distribution ``q`` that
    node ``i`` was drawn from, i.e. the drafter's distribution after the path to its parent.
    Siblings share that row. ``None`` means the draft is deterministic (one-hot ``q``).

    ``without_replacement``: siblings were drawn from ``q`` without replacement (Recursive
    Speculative Decoding); the sampling verifier then renormalizes ``q`` after each rejected
    sibling. Deterministic drafts must have distinct siblings and are handled either way.
    """

    tokens: list[int]
    parents: list[int]
    draft_probs: torch.Tensor | None = None  # [n, vocab]
    without_replacement: bool = False
    _children: list[list[int]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.parents)} parents")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}: parents must come before children")
        if self.draft_probs is not None and self.draft_probs.shape[0] != len(self.tokens):
            raise ValueError("draft_probs must have one row per node")

    @classmethod
    def chain(cls, tokens: list[int], draft_probs: torch.Tensor | None = None) -> DraftTree:
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), draft_probs)

    @classmethod
    def empty(cls) -> DraftTree:
        return cls([], [])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def children(self, node: int) -> list[int]:
        """Children of ``node`` (``-1`` for the root), in the drafter's order."""
        if self._children is None:
            kids: list[list[int]] = [[] for _ in range(len(self.tokens) + 1)]
            for i, p in enumerate(self.parents):
                kids[p + 1].append(i)
            self._children = kids
        return self._children[node + 1]

    def depths(self) -> list[int]:
        """Depth of each node; children of the root have depth 1."""
        return _depths(tuple(self.parents))

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to ``node`` (inclusive)."""
        path = []
        while node != -1:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


@lru_cache(maxsize=256)
def _depths(parents: tuple[int, ...]) -> list[int]:
    depth: list[int] = []
    for p in parents:
        depth.append(1 if p == -1 else depth[p] + 1)
    return depth


@lru_cache(maxsize=256)
def _ancestor_matrix(parents: tuple[int, ...]) -> torch.Tensor:
    """Boolean ``[n + 1, n + 1]``: entry ``(i, j)`` is true when row ``i`` may see row ``j``.

    Row 0 is the root; row ``k + 1`` is node ``k``. Each row sees itself and its ancestors.
    """
    n = len(parents) + 1
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[0, 0] = True
    for k, p in enumerate(parents):
        allowed[k + 1] = allowed[p + 1]
        allowed[k + 1, k + 1] = True
    return allowed


def tree_attention(
    parents: list[int], past_len: int, dtype: torch.dtype, device: torch.device, *, first_row: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4D additive attention mask and position ids for scoring ``[root] + tree``.

    Returns ``mask`` ``[1, 1, n + 1 - first_row, past_len + n + 1]`` (0 where attention is
    allowed, ``finfo.min`` where blocked) and ``position_ids`` ``[1, n + 1 - first_row]``
    (``past_len + depth``). Row 0 is the root's, row ``i + 1`` node ``i``'s; ``first_row`` > 0
    leaves out the rows of tokens already cached (a draft model growing its tree level by level).
    """
    key = tuple(parents)
    allowed = _ancestor_matrix(key)[first_row:]
    rows = len(parents) + 1
    full = torch.ones(rows - first_row, past_len + rows, dtype=torch.bool)
    full[:, past_len:] = allowed
    mask = torch.zeros(full.shape, dtype=dtype)
    mask.masked_fill_(~full, torch.finfo(dtype).min)
    depths = [0, *_depths(key)][first_row:]
    positions = torch.tensor([past_len + d for d in depths], dtype=torch.long)
    return mask[None, None].to(device), positions[None].to(device)
