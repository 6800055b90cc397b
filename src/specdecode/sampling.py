"""Sampling settings and the target distribution they define.

Temperature, top-k and top-p shape the *target* distribution ``p`` exactly as plain sampling
would; speculative sampling then reproduces that ``p``. Temperature 0 means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdecode.errors import SpecDecodeError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise SpecDecodeError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise SpecDecodeError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SpecDecodeError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def target_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Probabilities ``[..., vocab]`` after temperature, top-k and top-p (sampling only)."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(probs: torch.Tensor, gen: torch.Generator) -> int:
    """One token from ``probs`` ``[vocab]``."""
    return int(torch.multinomial(probs, 1, generator=gen))


def pick(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None) -> int:
    """The next token after ``logits`` ``[vocab]``: argmax when greedy, else a sample from p."""
    if cfg.greedy:
        return int(logits.argmax())
    return sample(target_probs(logits, cfg), gen)
