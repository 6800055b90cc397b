"""The KV cache behind one small adapter: its length, and dropping the rows of rejected drafts.

Speculative decoding feeds draft rows into a model's KV cache and drops the rejected ones
again: after a chain that is a crop (:meth:`KVCache.crop`), after a tree the accepted rows are
moved up behind the root first (:meth:`KVCache.keep`). :func:`kv_cache` builds a model's cache
and checks up front (as mlx-lm refuses a cache it cannot trim) that every layer supports both;
a model whose cache could not drop rows is refused with one error, before anything runs,
instead of being decoded from a corrupted cache. Another cache class (a static cache) is
added here, in one place.

Supported layers of transformers' ``DynamicCache``: full attention, and sliding-window (or
chunked) attention while the cache holds fewer rows than the window, because a sliding layer
forgets rows it would need back after a drop; :meth:`KVCache.check_room` refuses, before the
forward, to feed rows that could then no longer be dropped. Layers that hold no rows (shared
KV) are skipped.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DummyLayer, DynamicLayer, DynamicSlidingWindowLayer

from specdecode.errors import SpecDecodeError

# Exact classes: subclasses (quantized, indexed, linear-attention layers) keep state that
# slicing keys and values would not roll back.
SUPPORTED_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer, DummyLayer)


def cache_argument(model) -> str:
    """The name ``forward`` takes the KV cache under (``cache`` from transformers 5.24 on)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def kv_cache(model) -> KVCache:
    """An empty KV cache for ``model``; raises :class:`SpecDecodeError` when it cannot drop rows."""
    name = type(model).__name__
    if not getattr(model, "_supports_default_dynamic_cache", lambda: True)():
        raise SpecDecodeError(
            f"{name} keeps a cache of its own kind, which specdecode cannot roll back after a "
            "rejected draft: use a model with a standard attention KV cache"
        )
    cache = DynamicCache(config=model.config)
    unsupported = sorted({type(x).__name__ for x in cache.layers if type(x) not in SUPPORTED_LAYERS})
    if unsupported:
        raise SpecDecodeError(
            f"{name}'s KV cache ({type(cache).__name__} with {', '.join(unsupported)} layers) cannot "
            "drop the rows of rejected draft tokens; specdecode supports full-attention and "
            "sliding-window attention layers"
        )
    windows = [x.sliding_window for x in cache.layers if type(x) is DynamicSlidingWindowLayer]
    return KVCache(cache, cache_argument(model), min(windows) - 1 if windows else None)


class KVCache:
    """A model's KV cache: its length, and dropping rows (made by :func:`kv_cache`).

    ``limit``: the most rows the cache may hold and still drop some (a sliding window's size
    less one), or None.
    """

    def __init__(self, hf_cache: DynamicCache, argument: str, limit: int | None) -> None:
        self.hf_cache = hf_cache
        self.kwargs = {argument: hf_cache}  # hands the cache to the model's forward
        self.limit = limit

    @property
    def length(self) -> int:
        """Tokens whose keys and values are in the cache."""
        return self.hf_cache.get_seq_length()

    def check_room(self, rows: int) -> None:
        """Before a forward of ``rows`` tokens of which some will be dropped again: refuse it when
        the cache could then not drop them (a sliding window would forget rows)."""
        if self.limit is not None and self.length + rows > self.limit:
            self._refuse(self.length + rows)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` rows (none dropped when ``length >= self.length``)."""
        drop = self.length - length
        if drop > 0:
            self._check_nothing_forgotten()
            self.hf_cache.crop(-drop)

    def keep(self, start: int, rows: list[int]) -> None:
        """Move rows ``rows`` (ascending positions, from ``start`` on) to ``start, start + 1, ...``
        and drop every row after them: work in ``len(rows)``, not in the cache's length."""
        end = start + len(rows)
        if rows == list(range(start, end)):  # already in place (always so after a chain)
            self.crop(end)
            return
        self._check_nothing_forgotten()
        index: torch.Tensor | None = None  # [len(rows)]
        for layer in self.hf_cache.layers:
            if layer.keys is None or not layer.is_initialized:  # holds no rows (shared KV)
                continue
            # keys, values: [batch, kv_heads, length, head_dim]
            if index is None or index.device != layer.keys.device:
                index = torch.tensor(rows, device=layer.keys.device)
            # index_select copies the kept rows first, so overlapping ranges are safe.
            layer.keys[..., start:end, :] = layer.keys.index_select(-2, index)
            layer.values[..., start:end, :] = layer.values.index_select(-2, index)
            layer.keys = layer.keys[..., :end, :]
            layer.values = layer.values[..., :end, :]
            if type(layer) is DynamicSlidingWindowLayer:
                layer.cumulative_length = end

    def _check_nothing_forgotten(self) -> None:
        # check_room() keeps this from happening; a cheap check before rows are dropped.
        if self.limit is None:
            return
        for layer in self.hf_cache.layers:
            if type(layer) is DynamicSlidingWindowLayer and layer.is_initialized:
                if layer.keys.shape[-2] < layer.cumulative_length:
                    self._refuse(layer.cumulative_length)

    def _refuse(self, rows: int) -> None:
        raise SpecDecodeError(
            f"the context with the draft ({rows} tokens) is longer than the {self.limit} that the "
            "model's sliding-window KV cache keeps, past which it cannot drop rejected draft "
            "tokens: use a shorter context or plain decoding (method ar)"
        )
