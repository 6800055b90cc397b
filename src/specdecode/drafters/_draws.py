"""How a method that drafts from a model's distribution picks its draft tokens, one generation
at a time (``swift``, ``kangaroo``): the argmax under greedy decoding; under the Gumbel coupling
with a seed, ``argmax(log q + g)`` with the verifier's own noise ``g`` of that position
(coupled drafts, which the verifier accepts whenever the target would have chosen the same);
otherwise a draw from ``q`` with the drafter's own generator, seeded ``seed + 1`` so that it
never replays the verifier's draws."""

from __future__ import annotations

import torch

from specdecode.sampling import GumbelNoise, SamplingConfig


class DraftDraws:
    def __init__(self, sampling: SamplingConfig | None = None, device: torch.device | str = "cpu") -> None:
        sampling = sampling or SamplingConfig()
        self.greedy = sampling.greedy
        self.gen = None if sampling.greedy else sampling.generator(device)
        if sampling.seed is not None and self.gen is not None:
            self.gen.manual_seed(sampling.seed + 1)
        coupled = not sampling.greedy and sampling.gumbel and sampling.seed is not None
        self.noise = GumbelNoise(sampling.seed, device) if coupled else None

    @property
    def needs_q(self) -> bool:
        """Whether the verifier needs the draft distributions: sampled drafts that are not
        coupled (coupled ones are deterministic given the noise)."""
        return not self.greedy and self.noise is None

    def forget(self, before: int) -> None:
        """The noise rows of positions before ``before`` are no longer needed."""
        if self.noise is not None:
            self.noise.forget(before)

    def pick(self, q: torch.Tensor, position: int) -> int:
        """The draft token for sequence ``position`` from the draft distribution ``q`` ``[vocab]``."""
        if self.noise is not None:
            g = self.noise.at(position, q.shape[-1]).to(q.device)
            return int((q.log() + g).argmax())
        if self.gen is not None:
            return int(torch.multinomial(q, 1, generator=self.gen))
        return int(q.argmax())
