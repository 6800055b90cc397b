"""Sampling settings and the target distribution they define.

Temperature, top-k and top-p shape the *target* distribution ``p`` exactly as plain sampling
would; speculative sampling then reproduces that ``p``. Temperature 0 means greedy.

Two ways to draw from ``p`` (``coupling``):

- ``residual``: speculative sampling as in the papers (accept a draft token ``x`` with
  ``min(1, p(x) / q(x))``, resample a rejection from ``norm(max(0, p - q))``). The output
  follows ``p`` exactly, but *which* sample a seed gives depends on the drafts, so a drafter
  that learns across requests makes the same seed give other (equally distributed) text.
- ``gumbel``: the Gumbel-max coupling (Daliri et al. 2024, "Coupling without Communication and
  Drafter-Invariant Speculative Decoding"). The token at sequence position ``t`` is
  ``argmax(log p_t + g_t)`` with Gumbel noise ``g_t`` drawn from a generator keyed by
  ``(seed, t)`` alone; a draft token is accepted exactly when it is that token. Each token
  still follows ``p`` (Gumbel-max sampling is exact), and the text depends on the seed, the
  model and the prompt only: every method, every call, gives what ``ar`` gives with that seed.

``auto`` (the default) is ``gumbel`` when a seed is given and ``residual`` otherwise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import torch

from specdecode.errors import SpecDecodeError

COUPLINGS = ("auto", "residual", "gumbel")
# Below this, logits / temperature overflow float32 for ordinary logits; it is greedy in effect.
MIN_TEMPERATURE = 1e-5
MAX_SEED = 2**64 - 1


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None
    coupling: str = "auto"  # "auto" | "residual" | "gumbel" (see the module docstring)

    def __post_init__(self) -> None:
        t = self.temperature
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise SpecDecodeError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if 0 < t < MIN_TEMPERATURE:
            raise SpecDecodeError(
                f"temperature {t!r} is too small to sample with: use 0 for greedy decoding "
                f"or a temperature >= {MIN_TEMPERATURE}"
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise SpecDecodeError(f"top-k must be a whole number >= 0 (0 = off), got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise SpecDecodeError(f"top-p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise SpecDecodeError(f"seed must be a whole number from 0 to 2**64 - 1, got {self.seed!r}")
        if self.coupling not in COUPLINGS:
            raise SpecDecodeError(f"coupling must be one of {', '.join(COUPLINGS)}, got {self.coupling!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def gumbel(self) -> bool:
        """Sampling draws through the seed-keyed Gumbel-max coupling."""
        if self.greedy:
            return False
        return self.coupling == "gumbel" or (self.coupling == "auto" and self.seed is not None)

    def generator(self, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def target_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p (sampling only).

    ``logits``: ``[..., vocab_size]``; returns the same shape, float32.
    """
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


class GumbelNoise:
    """Gumbel noise ``[vocab]`` per sequence position, keyed by ``(seed, position)`` only.

    The same seed gives the same noise at the same position in any process, whatever drafted
    the tokens before it. Rows are kept for the positions still ahead (:meth:`forget` drops
    the committed ones).
    """

    def __init__(self, seed: int, device: torch.device | str) -> None:
        self.seed = seed
        self.device = torch.device(device)
        self._rows: dict[int, torch.Tensor] = {}

    def at(self, position: int, vocab: int) -> torch.Tensor:
        row = self._rows.get(position)
        if row is None or row.shape[0] != vocab:
            gen = torch.Generator(device=self.device)
            # splitmix-style mixing, so nearby (seed, position) pairs give unrelated streams
            key = (self.seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 1) % (1 << 64)
            gen.manual_seed(key)
            u = torch.rand(vocab, generator=gen, device=self.device, dtype=torch.float64)
            u = u.clamp_(min=1e-300, max=1 - 1e-16)
            row = self._rows[position] = (-torch.log(-torch.log(u))).float()
        return row

    def forget(self, before: int) -> None:
        for pos in [p for p in self._rows if p < before]:
            del self._rows[pos]

    def choices(self, probs: torch.Tensor, positions: list[int]) -> list[int]:
        """``argmax(log p + g)`` for each row of ``probs`` ``[rows, vocab]`` at its position."""
        vocab = probs.shape[-1]
        noise = torch.stack([self.at(p, vocab) for p in positions])  # [rows, vocab_size]
        return (probs.log() + noise).argmax(-1).tolist()


class Sampler:
    """One generation's draws: greedy, a seeded generator, or the Gumbel coupling.

    Created per request (``SamplingConfig.sampler``), never shared between requests.
    """

    def __init__(self, cfg: SamplingConfig, device: torch.device | str) -> None:
        self.cfg = cfg
        self.gen = None if cfg.greedy or cfg.gumbel else cfg.generator(device)
        self.noise = None
        if cfg.gumbel:
            seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 1 << 62, ()).item())
            self.noise = GumbelNoise(seed, device)
            # the seed the noise is keyed by, so that drafters given this config can draw with it
            self.cfg = replace(cfg, seed=seed)

    def first(self, logits: torch.Tensor, position: int) -> int:
        """The token at sequence ``position`` after ``logits`` ``[vocab]`` (the prefill's)."""
        if self.cfg.greedy:
            return int(logits.argmax())
        probs = target_probs(logits, self.cfg)
        if self.noise is not None:
            return self.noise.choices(probs[None], [position])[0]
        return sample(probs, self.gen)
