"""The target model as a scorer: prefill, score a draft tree in one forward, commit a path.

The target owns its KV cache (a :class:`specdecode.kvcache.KVCache`). Drafters never touch it,
and the target never knows which drafter ran. The cache always holds exactly the committed
tokens except the newest one, the *root*, which is fed with the next draft tree.

Drafters that draft from the target itself (layer skipping, draft heads) may *read* what its
forwards computed through a :class:`TargetReader` (:meth:`Target.reader`): the final hidden
state of the newest cached token, and the committed rows of the KV cache. They copy what they
need; nothing is ever written back.
"""

from __future__ import annotations

import torch

from specdecode.errors import SpecDecodeError
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
        self._want_hidden = False  # a reader asked for hidden states (see reader())
        self._hidden: torch.Tensor | None = None  # [rows, hidden_size] of the last forward
        self.last_hidden: torch.Tensor | None = None  # [hidden_size] of the newest cached token

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
        out = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **self._hidden_kwargs, **self.cache.kwargs
        )
        if self._want_hidden:
            self.last_hidden = _final_hidden(out)[-1]
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
        out = self.model(
            input_ids=input_ids, use_cache=True, **kwargs, **self._hidden_kwargs, **self.cache.kwargs
        )
        if self._want_hidden:
            self._hidden = _final_hidden(out)  # [n + 1, hidden_size]
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
        if self._hidden is not None:  # the newest cached token: the path's last node, or the root
            self.last_hidden = self._hidden[path[-1] + 1 if path else 0]
            self._hidden = None

    def crop(self, length: int) -> None:
        """Truncate the cache to its first ``length`` tokens."""
        assert self.cache is not None and self._pending == 0
        self.cache.crop(length)

    @property
    def _hidden_kwargs(self) -> dict:
        return {"output_hidden_states": True} if self._want_hidden else {}

    def reader(self, needs: frozenset[str]) -> TargetReader:
        """Read access for a drafter that declared ``needs`` (``"hidden"``, ``"kv"``); refuses,
        with one clear error, what this model's forward or cache cannot give."""
        unknown = set(needs) - {"hidden", "kv"}
        if unknown:
            raise ValueError(f"unknown target reads {sorted(unknown)}")
        if "hidden" in needs:
            self._want_hidden = True
        return TargetReader(self, frozenset(needs))


def check_readable(loaded, method: str) -> None:
    """Refuse, up front, a method that reads the target's forwards (:class:`TargetReader`) on a
    backend whose target cannot give them (only the transformers target does)."""
    backend = getattr(loaded, "backend", "transformers")
    if backend != "transformers":
        raise SpecDecodeError(
            f"{method} drafts from the target's own hidden states or layers, which the {backend} "
            "backend does not expose: use the transformers backend, or a method that does not read "
            "the target (e.g. pld, hybrid)"
        )


def _final_hidden(out) -> torch.Tensor:
    """The final hidden states ``[rows, hidden_size]`` (after the final norm, as the LM head sees
    them) from a forward run with ``output_hidden_states``."""
    states = getattr(out, "hidden_states", None)
    if not states:
        raise SpecDecodeError(
            "this model's forward returns no hidden states, which the chosen method drafts from: "
            "use a method that does not read the target (e.g. pld, hybrid)"
        )
    return states[-1][0]


class TargetReader:
    """What a self-drafting method may read of one generation's :class:`Target`; never write.

    ``hidden``: the final hidden state ``[hidden_size]`` of the newest cached token (the one
    whose logits gave the root), when ``"hidden"`` was asked for. ``kv(layer)``: views of the
    keys and values ``[batch, kv_heads, length, head_dim]`` of the committed rows; callers copy
    them (their own cache), never write into them.
    """

    def __init__(self, target: Target, needs: frozenset[str]) -> None:
        self._target = target
        self.needs = needs

    @property
    def length(self) -> int:
        """Committed tokens whose keys and values are cached (all but the root)."""
        return self._target.length - self._target._pending

    @property
    def hidden(self) -> torch.Tensor:
        assert "hidden" in self.needs and self._target.last_hidden is not None, "no hidden state read yet"
        return self._target.last_hidden

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert "kv" in self.needs and self._target.cache is not None
        cached = self._target.cache.hf_cache.layers[layer]
        n = self.length
        return cached.keys[..., :n, :], cached.values[..., :n, :]
