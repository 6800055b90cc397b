"""Diverse beam search (Vijayakumar et al., "Diverse Beam Search: Decoding Diverse Solutions from
Neural Sequence Models", 2016/2018), with the Hamming diversity term.

The ``num_beams`` beams are split into ``num_beam_groups`` groups of equal size. Each step, the
groups choose their next beams one after the other; group ``g`` scores a token by its
log-probability minus ``diversity_penalty`` times the number of beams of groups ``0 .. g-1``
that chose that same token at this step. Within a group this is plain beam search over the
penalized scores (the penalty stays in the beam's running score). This is the semantics of
transformers' former ``group_beam_search`` (removed from the library in 5.x, moved to a hub
repository): the same initial scores (only each group's first beam is live at the start), the
same ``2 x group size`` candidates per group, hypotheses finished by EOS scored as
``score / generated_length ** length_penalty``, and the same stopping rule (a group is done
once it holds ``group size`` finished hypotheses that no running beam can beat, or with
``early_stopping`` as soon as it holds them). One departure: once a group is done, its beams
no longer count in the later groups' penalty (transformers counted their padding token).

What it preserves: nothing of ``ar``'s output by design. With one group (or a zero penalty) it
is plain beam search, and the best beam is a higher-likelihood (length-normalized) sequence
than greedy decoding usually finds; with more groups the beams are more varied. It is
deterministic and costs one forward over ``num_beams`` rows per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch

from specdecode.errors import SpecDecodeError
from specdecode.registry import at_least
from specdecode.strategies import Candidate, Strategy, StrategyOutput, register_strategy
from specdecode.strategies._lm import RowsLM

NEG = -1.0e9  # transformers' "impossible" score for the not-yet-live beams


@dataclass
class _Hypotheses:
    """The finished hypotheses of one group: at most ``size``, the worst dropped."""

    size: int
    length_penalty: float
    early_stopping: bool
    items: list[tuple[float, list[int]]] = field(default_factory=list)
    worst: float = 1e9
    done: bool = False

    def add(self, tokens: list[int], sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / (generated_len**self.length_penalty)
        if len(self.items) < self.size or score > self.worst:
            self.items.append((score, tokens))
            if len(self.items) > self.size:
                del self.items[min(range(len(self.items)), key=lambda i: self.items[i][0])]
                self.worst = min(s for s, _ in self.items)
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, generated_len: int) -> bool:
        if len(self.items) < self.size:
            return False
        if self.early_stopping:
            return True
        return self.worst >= best_sum_logprobs / (generated_len**self.length_penalty)


def diverse_beam_search(
    lm,
    prompt_ids: list[int],
    *,
    num_beams: int,
    num_beam_groups: int,
    diversity_penalty: float,
    max_new_tokens: int,
    eos_ids: set[int],
    length_penalty: float = 1.0,
    early_stopping: bool = False,
) -> list[Candidate]:
    """Every final hypothesis, best first (``lm``: a :class:`RowsLM` or :class:`TableLM`).

    A hypothesis ended by EOS keeps the EOS token; its score is the sum of its (penalized)
    log-probs divided by ``generated_length ** length_penalty``, EOS counted in the length.
    """
    if num_beams % num_beam_groups:
        raise SpecDecodeError(
            f"num_beams ({num_beams}) must be a multiple of num_beam_groups ({num_beam_groups})"
        )
    size = num_beams // num_beam_groups
    groups = [_Hypotheses(size, length_penalty, early_stopping) for _ in range(num_beam_groups)]
    first = lm.start(prompt_ids)  # [V]
    logprobs = first.expand(num_beams, -1)  # [B, V]: every beam starts as the prompt
    vocab = logprobs.shape[-1]
    beam_scores = torch.full((num_beams,), NEG)
    beam_scores[::size] = 0.0  # only the first beam of each group is live at the start
    seqs: list[list[int]] = [[] for _ in range(num_beams)]
    eos_sorted = sorted(eos_ids)
    pad = eos_sorted[0] if eos_sorted else 0
    n_candidates = min(max(2, 1 + len(eos_sorted)) * size, size * vocab)

    for step in range(1, max_new_tokens + 1):  # ``step``: generated length with this token
        chosen = [pad] * num_beams  # this step's token for each beam
        parents = list(range(num_beams))
        new_scores = beam_scores.clone()
        new_seqs = [list(s) for s in seqs]
        for g, hyps in enumerate(groups):
            lo, hi = g * size, (g + 1) * size
            if hyps.done:
                continue
            scores = logprobs[lo:hi].clone()  # [size, V]
            if g > 0 and diversity_penalty != 0.0:
                earlier = [chosen[i] for i in range(lo) if not groups[i // size].done]
                if earlier:
                    counts = torch.bincount(torch.tensor(earlier), minlength=vocab).to(scores.dtype)
                    scores -= diversity_penalty * counts
            scores = (scores + beam_scores[lo:hi, None]).reshape(-1)
            top_scores, top_ids = torch.topk(scores, n_candidates)
            kept = 0
            for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top_ids.tolist(), strict=True)):
                row, token = lo + flat // vocab, flat % vocab
                if token in eos_ids:
                    if rank < size:  # only a top-``size`` candidate may finish
                        hyps.add(seqs[row] + [token], score, step)
                    continue
                slot = lo + kept
                new_scores[slot] = score
                new_seqs[slot] = seqs[row] + [token]
                chosen[slot], parents[slot] = token, row
                kept += 1
                if kept == size:
                    break
            hyps.done = hyps.done or hyps.is_done(float(top_scores.max()), step)
        beam_scores, seqs = new_scores, new_seqs
        if all(h.done for h in groups) or step == max_new_tokens:
            break
        if step == 1:  # the beams are copies of the prompt's one row so far
            parents = [0] * num_beams
        logprobs = lm.step(parents, chosen)

    for g, hyps in enumerate(groups):
        if hyps.done:
            continue
        for row in range(g * size, (g + 1) * size):
            hyps.add(seqs[row], float(beam_scores[row]), len(seqs[row]))
    finished = [Candidate(tokens, score) for h in groups for score, tokens in h.items]
    finished.sort(key=lambda c: c.score, reverse=True)
    return finished


@register_strategy(
    "diverse-beam",
    "diverse beam search (Vijayakumar et al.): beam groups kept apart by a Hamming diversity penalty; "
    "lossy: returns the best beam, not ar's text",
)
class DiverseBeam(Strategy):
    def __init__(
        self,
        ctx,
        num_beams: Annotated[int, "beams in all (a multiple of num_beam_groups)", at_least(1)] = 4,
        num_beam_groups: Annotated[int, "groups the beams are split into", at_least(1)] = 2,
        diversity_penalty: Annotated[
            float, "subtracted per earlier-group beam that chose the same token this step", at_least(0)
        ] = 1.0,
        length_penalty: Annotated[float, "finished scores are divided by length ** this"] = 1.0,
        early_stopping: Annotated[bool, "a group stops as soon as it has enough finished beams"] = False,
    ) -> None:
        super().__init__(ctx)
        if num_beams % num_beam_groups:
            raise SpecDecodeError(
                f"diverse-beam: num_beams ({num_beams}) must be a multiple of num_beam_groups "
                f"({num_beam_groups})"
            )
        self.num_beams, self.num_beam_groups = num_beams, num_beam_groups
        self.diversity_penalty, self.length_penalty = diversity_penalty, length_penalty
        self.early_stopping = early_stopping

    def decode(self, prompt_ids, *, max_new_tokens, context=None) -> StrategyOutput:
        lm = RowsLM(self.loaded)
        eos = set(self.loaded.eos_token_ids)
        beams = diverse_beam_search(
            lm, prompt_ids, num_beams=self.num_beams, num_beam_groups=self.num_beam_groups,
            diversity_penalty=self.diversity_penalty, max_new_tokens=max_new_tokens, eos_ids=eos,
            length_penalty=self.length_penalty, early_stopping=self.early_stopping,
        )  # fmt: skip
        best = beams[0]
        ended = bool(best.token_ids) and best.token_ids[-1] in eos
        return StrategyOutput(
            token_ids=list(best.token_ids),
            finish_reason="eos" if ended else "length",
            score=best.score,
            candidates=beams,
            forwards=lm.forwards,
            stats={"num_beams": self.num_beams, "num_beam_groups": self.num_beam_groups},
        )
