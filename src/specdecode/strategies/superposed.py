"""Superposed decoding (Shen et al., "Superposed Decoding: Multiple Generations from a Single
Autoregressive Inference Pass", NeurIPS 2024): ``k`` drafts for the price of about one.

One KV cache, one row, one forward per step. The input of a step is not a token but the
weighted sum (superposition) of the embeddings of the ``k`` drafts' latest tokens, weighted by
the drafts' normalized probabilities. The single output distribution ``p_LM`` is then read for
each draft separately: draft ``i`` scores the next token by
``lm_weight * p_LM + (1 - lm_weight) * p_ngram(. | draft i)``, an n-gram model that keeps each
draft on its own track (the paper's n-gram interpolation). The ``k x k`` extensions (each
draft's top ``k``) are ranked by the draft's cumulative log-score and the best ``k`` kept, as in
a beam search.

The n-gram model: the paper builds it from large text corpora; this implementation, which
must run offline, builds it from the prompt's own tokens (orders 2 .. ``ngram_order``, each
order that matches the draft's last tokens weighted equally, contexts of at least two tokens), so it keeps drafts on track
where the answer copies the prompt and leaves ``p_LM`` alone elsewhere (no match: weight 1).

What it preserves: nothing of ``ar``'s output by design. The drafts are plausible
continuations, not samples of the model's distribution, and the superposed input is not a
sequence the model was trained on, so quality falls as ``k`` grows. Deterministic. Drafts are
ranked by mean log-score per token; the best is the output, all are in the API result.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

import torch

from specdecode.errors import SpecDecodeError
from specdecode.registry import at_least, in_range
from specdecode.strategies import Candidate, Strategy, StrategyOutput, register_strategy
from specdecode.strategies._lm import RowsLM


class PromptNgrams:
    """Next-token counts after every context of ``min_context`` .. ``order - 1`` tokens in
    ``tokens`` (one token of context matches too often in a short text to mean much)."""

    def __init__(self, tokens: list[int], order: int, min_context: int = 2) -> None:
        self.order, self.min_context = order, min(min_context, order - 1)
        self.counts: dict[tuple[int, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for n in range(self.min_context, order):
            for i in range(n, len(tokens)):
                self.counts[tuple(tokens[i - n : i])][tokens[i]] += 1

    def distribution(self, history: list[int], vocab: int) -> torch.Tensor | None:
        """``p_ngram(. | history)`` as ``[vocab]``, the matching orders averaged; None when no
        suffix of ``history`` was seen."""
        found = []
        for n in range(self.min_context, self.order):
            if len(history) < n:
                break
            nxt = self.counts.get(tuple(history[-n:]))
            if nxt:
                found.append(nxt)
        if not found:
            return None
        p = torch.zeros(vocab)
        for nxt in found:
            total = sum(nxt.values())
            for token, c in nxt.items():
                if token < vocab:
                    p[token] += c / total / len(found)
        return p


def superposed_decode(
    lm: RowsLM,
    embed,
    prompt_ids: list[int],
    *,
    k: int,
    max_new_tokens: int,
    eos_ids: set[int],
    lm_weight: float,
    ngram_order: int,
) -> list[Candidate]:
    """``k`` drafts from one pass; each ``Candidate.score`` is the draft's mean log-score per token."""
    first = lm.start(prompt_ids).exp()  # [V]
    vocab = first.shape[-1]
    if k > vocab:
        raise SpecDecodeError(f"superposed: num_drafts ({k}) is more than the vocabulary ({vocab})")
    ngrams = PromptNgrams(prompt_ids, ngram_order)

    def mix(p_lm: torch.Tensor, history: list[int]) -> torch.Tensor:
        p_ng = ngrams.distribution(history, vocab) if lm_weight < 1 else None
        p = p_lm if p_ng is None else lm_weight * p_lm + (1 - lm_weight) * p_ng
        return torch.log(p.clamp_min(1e-30))

    start = mix(first, prompt_ids)
    top = torch.topk(start, k)
    drafts = [[int(t)] for t in top.indices.tolist()]
    scores = top.values.tolist()  # cumulative log-score of each running draft
    finished: list[Candidate] = []
    running = []
    for d, s in zip(drafts, scores, strict=True):
        if d[-1] in eos_ids:
            finished.append(Candidate(d, s / len(d)))
        else:
            running.append((d, s))

    for _ in range(1, max_new_tokens):
        if not running:
            break
        weights = torch.softmax(torch.tensor([s for _, s in running]), dim=0)  # normalized draft probs
        with torch.inference_mode():
            vectors = embed(torch.tensor([d[-1] for d, _ in running], device=lm.device)).float()  # [k, H]
            superposed = (weights.to(vectors.device)[:, None] * vectors).sum(0)  # [H]
        p_lm = lm.step_embeds(superposed).exp().cpu()  # [V]
        extensions = []
        for d, s in running:
            logp = mix(p_lm, prompt_ids + d)
            best = torch.topk(logp, k)
            for lp, t in zip(best.values.tolist(), best.indices.tolist(), strict=True):
                extensions.append((s + lp, d + [int(t)]))
        extensions.sort(key=lambda e: e[0], reverse=True)
        running = []
        for s, d in extensions[:k]:
            if d[-1] in eos_ids:
                finished.append(Candidate(d, s / len(d)))
            else:
                running.append((d, s))
    out = finished + [Candidate(d, s / len(d)) for d, s in running]
    out.sort(key=lambda c: c.score, reverse=True)
    return out[:k]


@register_strategy(
    "superposed",
    "superposed decoding (Shen et al.): k drafts from one pass over superposed embeddings, kept on track "
    "by prompt n-grams; lossy",
)
class Superposed(Strategy):
    def __init__(
        self,
        ctx,
        num_drafts: Annotated[int, "drafts produced together (k)", at_least(1)] = 3,
        lm_weight: Annotated[
            float, "weight of the model's distribution against the prompt n-grams", in_range(0, 1)
        ] = 0.8,
        ngram_order: Annotated[int, "longest n-gram matched in the prompt", at_least(2)] = 4,
    ) -> None:
        super().__init__(ctx)
        self.k, self.lm_weight, self.ngram_order = num_drafts, lm_weight, ngram_order

    def decode(self, prompt_ids, *, max_new_tokens, context=None) -> StrategyOutput:
        lm = RowsLM(self.loaded)
        eos = set(self.loaded.eos_token_ids)
        drafts = superposed_decode(
            lm, self.loaded.model.get_input_embeddings(), prompt_ids, k=self.k,
            max_new_tokens=max_new_tokens, eos_ids=eos, lm_weight=self.lm_weight,
            ngram_order=self.ngram_order,
        )  # fmt: skip
        best = drafts[0]
        ended = best.token_ids[-1] in eos
        return StrategyOutput(
            token_ids=list(best.token_ids),
            finish_reason="eos" if ended else "length",
            score=best.score,
            candidates=drafts,
            forwards=lm.forwards,
            stats={"num_drafts": self.k},
        )
