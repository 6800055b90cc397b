"""The target model as a scorer: prefill, score a draft tree in one forward, commit a path.

The target owns its KV cache (a transformers ``DynamicCache``). Drafters never touch it, and
the target never knows which drafter ran. The cache always holds exactly the committed
tokens except the newest one, the *root*, which is fed with the next draft tree.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from specdecode.tree import DraftTree, tree_attention


def cache_argument(model) -> str:
    """The name ``forward`` takes the KV cache under (``cache`` from transformers 5.24 on)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Target:
    """Scores draft trees for a loaded causal LM; keeps the KV cache of the accepted path."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.cache: DynamicCache | None = None
        self._mask_dtype = loaded.dtype
        self._pending = 0  # rows appended by the last score() and not yet committed
        self._cache_arg = cache_argument(self.model)

    @property
    def length(self) -> int:
        """Tokens whose keys and values are in the cache."""
        return 0 if self.cache is None else self.cache.get_seq_length()

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Start a new sequence: cache ``ids`` and return the logits after the last one ``[vocab]``."""
        self.cache = DynamicCache(config=self.model.config)
        self._pending = 0
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: self.cache}
        )
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def score(self, root: int, tree: DraftTree) -> torch.Tensor:
        """Score ``[root] + tree.tokens`` in one forward pass.

        Returns logits ``[n + 1, vocab]``: row 0 follows the root, row ``i + 1`` follows node ``i``.
        Until :meth:`commit`, the cache holds the rows of every scored node.
        """
        assert self.cache is not None, "prefill() first"
        assert self._pending == 0, "commit() the previous tree first"
        past = self.length
        input_ids = torch.tensor([[root, *tree.tokens]], dtype=torch.long, device=self.device)
        kwargs = {}
        if not tree.is_chain:
            # A chain is causal already; a tree needs its ancestor mask and depth positions.
            mask, positions = tree_attention(tree.parents, past, self._mask_dtype, self.device)
            kwargs = {
                "attention_mask": mask,
                "position_ids": positions,
                "cache_position": torch.arange(past, past + len(tree) + 1, device=self.device),
            }
        kwargs[self._cache_arg] = self.cache
        out = self.model(input_ids=input_ids, use_cache=True, **kwargs)
        self._pending = len(tree) + 1
        return out.logits[0].float()

    @torch.inference_mode()
    def commit(self, path: list[int]) -> None:
        """Keep the root and the accepted ``path`` (node indices, root's child first); drop the rest.

        For a path that is a prefix of the node order (always so for a chain) this is a crop;
        otherwise the accepted rows are moved up behind the root, in place, and the rest cut
        off (compaction): work in the path's length, not the context's.
        """
        assert self.cache is not None
        scored, self._pending = self._pending, 0
        drop = scored - 1 - len(path)
        if path == list(range(len(path))):
            if drop:
                self.cache.crop(-drop)
            return
        rows = torch.tensor([1 + i for i in path], device=self.device)  # accepted, counted from the root
        for layer in self.cache.layers:
            if not getattr(layer, "is_initialized", True) or layer.keys is None:
                continue
            root = layer.keys.shape[-2] - scored  # the root's row in this layer
            end = root + 1 + len(path)
            # index_select copies the accepted rows first, so overlapping ranges are safe.
            layer.keys[..., root + 1 : end, :] = layer.keys.index_select(-2, rows + root)
            layer.values[..., root + 1 : end, :] = layer.values.index_select(-2, rows + root)
            layer.keys = layer.keys[..., :end, :]
            layer.values = layer.values[..., :end, :]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length -= drop

    def crop(self, length: int) -> None:
        """Truncate the cache to its first ``length`` tokens."""
        assert self.cache is not None and self._pending == 0
        if length < self.length:
            self.cache.crop(length - self.length)
