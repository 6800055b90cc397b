"""A causal LM over several rows of equal length with one KV cache (beams, drafts).

Strategies need less than the speculative :class:`specdecode.target.Target`: rows that all
grow by one token a step, reordered between steps (a beam's parent). :class:`RowsLM` gives
log-probabilities in float32; :class:`TableLM` (tests) gives them from a function of the
sequence, so a search can be checked against a case computed by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from specdecode.kvcache import cache_argument


class RowsLM:
    """``start(prompt)`` then ``step(parents, tokens)``: row ``i`` of the next step continues
    row ``parents[i]`` of the last one with ``tokens[i]``. Counts its forwards."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self._arg = cache_argument(self.model)
        self.cache = None
        self.length = 0
        self.forwards = 0

    @torch.inference_mode()
    def start(self, prompt_ids: list[int]) -> torch.Tensor:
        """Log-probs of the next token after the prompt: ``[vocab]``."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._arg: self.cache})
        self.length = len(prompt_ids)
        self.forwards += 1
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1)

    def _forward(self, parents: list[int], **inputs) -> torch.Tensor:
        index = torch.tensor(parents, dtype=torch.long, device=self.device)
        self.cache.reorder_cache(index)  # index_select on the batch: duplicates rows as needed
        n = len(parents)
        positions = torch.full((n, 1), self.length, dtype=torch.long, device=self.device)
        cache_position = torch.tensor([self.length], dtype=torch.long, device=self.device)
        out = self.model(
            use_cache=True,
            position_ids=positions,
            cache_position=cache_position,
            **inputs,
            **{self._arg: self.cache},
        )
        self.length += 1
        self.forwards += 1
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    @torch.inference_mode()
    def step(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        """Log-probs ``[n, vocab]`` after feeding ``tokens[i]`` to a copy of row ``parents[i]``."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        return self._forward(parents, input_ids=ids)

    @torch.inference_mode()
    def step_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """One row fed an input embedding ``[hidden]`` instead of a token: ``[vocab]``."""
        return self._forward([0], inputs_embeds=embeds.to(self.model.dtype)[None, None, :])[0]


class TableLM:
    """Log-probs from ``fn(sequence) -> [vocab] log-probs`` (sequence: prompt + new tokens);
    the same interface as :class:`RowsLM`, for tests with hand-made distributions."""

    def __init__(self, fn: Callable[[list[int]], torch.Tensor]) -> None:
        self.fn = fn
        self.rows: list[list[int]] = []
        self.forwards = 0

    def start(self, prompt_ids: list[int]) -> torch.Tensor:
        self.rows = [list(prompt_ids)]
        self.forwards += 1
        return self.fn(self.rows[0])

    def step(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        self.rows = [self.rows[p] + [t] for p, t in zip(parents, tokens, strict=True)]
        self.forwards += 1
        return torch.stack([self.fn(r) for r in self.rows])
