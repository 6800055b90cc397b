"""The target model as a scorer: prefill, score a draft tree in one forward, commit a path.

The target owns its KV cache (a :class:`specdecode.kvcache.KVCache`). Drafters never touch it,
and the target never knows which drafter ran. The cache always holds exactly the committed
tokens except the newest one, the *root*, which is fed with the next draft tree.
"""

from __future__ import annotations

import torch

from specdecode.kvcache import KVCache, kv_cache
from specdecode.tree import DraftTree, tree_attention


class Target:
    """Scores draft trees for a loaded causal LM; keeps the KV cache of the accepted path."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.cache: KVCache | None = None
        self._mask_dtype = loaded.dtype
        self._pending = 0  # rows appended by the last score() and not yet committed

    @property
    def length(self) -> int:
        """Tokens whose keys and values are in the cache."""
        return 0 if self.cache is None else self.cache.length

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Start a new sequence: cache ``ids`` and return the logits after the last one.

        Returns ``[vocab_size]``. Refuses a model whose cache cannot drop rows (:func:`kv_cache`).
        """
        self.cache = kv_cache(self.model)
        self._pending = 0
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, len(ids)]
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **self.cache.kwargs)
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def score(self, root: int, tree: DraftTree) -> torch.Tensor:
        """Score ``[root] + tree.tokens`` in one forward pass.

        Returns logits ``[n + 1, vocab_size]``: row 0 follows the root, row ``i + 1`` follows node ``i``.
        Until :meth:`commit`, the cache holds the rows of every scored node.
        """
        assert self.cache is not None, "prefill() first"
        assert self._pending == 0, "commit() the previous tree first"
        past = self.length
        if len(tree):
            self.cache.check_room(len(tree) + 1)  # the nodes' rows may be dropped again
        # [1, n + 1]
        input_ids = torch.tensor([[root, *tree.tokens]], dtype=torch.long, device=self.device)
        kwargs = {}
        if not tree.is_chain:
            # A chain is causal already; a tree needs its ancestor mask and depth positions.
            mask, positions = tree_attention(tree.parents, past, self._mask_dtype, self.device)
            kwargs = {
                "attention_mask": mask,  # [1, 1, n + 1, past + n + 1]
                "position_ids": positions,  # [1, n + 1]
                "cache_position": torch.arange(past, past + len(tree) + 1, device=self.device),
            }
        out = self.model(input_ids=input_ids, use_cache=True, **kwargs, **self.cache.kwargs)
        self._pending = len(tree) + 1
        return out.logits[0].float()

    @torch.inference_mode()
    def commit(self, path: list[int]) -> None:
        """Keep the root and the accepted ``path`` (node indices, root's child first); drop the rest.

        For a path that is a prefix of the node order (always so for a chain) this is a crop;
        otherwise the accepted rows are moved up behind the root and the rest cut off
        (compaction, :meth:`KVCache.keep`): work in the path's length, not the context's.
        """
        assert self.cache is not None
        scored, self._pending = self._pending, 0
        root = self.length - scored  # the root's row
        self.cache.keep(root + 1, [root + 1 + i for i in path])

    def crop(self, length: int) -> None:
        """Truncate the cache to its first ``length`` tokens."""
        assert self.cache is not None and self._pending == 0
        self.cache.crop(length)
