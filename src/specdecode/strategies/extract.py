"""Exact-extract span decoding for extractive question answering: the answer is a span of the
given context, copied token for token.

The context is tokenized once; the answer may start with any context token, and each next
token must continue some occurrence of the answer so far in the context (the set of matching
end positions is kept and advanced, so repeated phrases are followed everywhere they occur).
End-of-sequence is allowed after the first token. At each step the model's most likely
allowed token is taken (greedy; the model's distribution is masked, not renormalized, for the
choice). The score is the model's log-probability of the span (and of the EOS that ended it,
when one did) under its unconstrained distribution: how much the model itself believes the
extracted answer.

What it preserves: the answer's text is a verbatim span of the context (a contiguous run of
its tokens), whatever the model would rather have said; it is not ``ar``'s output. The model
still chooses where the span starts and ends.

Without a context (``specdecode bench``), the span comes from the prompt itself (its tokens,
special tokens left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from specdecode.errors import SpecDecodeError
from specdecode.registry import at_least
from specdecode.strategies import Strategy, StrategyOutput, register_strategy
from specdecode.strategies._lm import RowsLM

PROMPT = "Context:\n{context}\n\nQuestion: {question}\nAnswer with a phrase copied exactly from the context."


def extract_prompt(context: str, question: str) -> str:
    """The message sent to the model for ``question`` about ``context``."""
    return PROMPT.format(context=context.strip(), question=question.strip())


@dataclass
class _Prefix:
    tokens: list[int]
    ends: list[int]  # context positions where an occurrence of ``tokens`` ends
    score: float  # log-prob of ``tokens``
    row: int  # its row in the last forward


def extract_span(
    lm,
    prompt_ids: list[int],
    context_ids: list[int],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    num_beams: int = 1,
) -> tuple[list[int], float, str, int]:
    """The best-scoring span found; returns ``(tokens, score, finish_reason, start)``.

    ``tokens`` is a run of ``context_ids`` starting at token ``start``, followed by the EOS
    that ended it when one did (``finish_reason`` "eos"; "length" when the span was cut at
    ``max_new_tokens``, "span-end" when a model without EOS reached the context's end);
    ``score`` is its log-probability under the model, the EOS included. The search keeps the
    ``num_beams`` most likely span prefixes (1: greedy), extends each only with tokens that
    continue one of its occurrences, and considers ending every prefix with EOS. Log-probs
    only fall as a prefix grows, so a prefix scoring below the best ended span is dropped, and
    the search stops when none is left: the result is the best span on the paths searched.
    """
    if not context_ids:
        raise SpecDecodeError("exact-extract: the context is empty, so there is no span to copy")
    n = len(context_ids)
    eos = min(eos_ids) if eos_ids else None
    logprobs = lm.start(prompt_ids)[None]  # [rows, V]
    vocab = logprobs.shape[-1]
    starts: dict[int, list[int]] = {}
    for j, t in enumerate(context_ids):
        if t < vocab:
            starts.setdefault(t, []).append(j)
    best: tuple[float, list[int], str, int] | None = None

    def consider(score: float, tokens: list[int], reason: str, start: int) -> None:
        nonlocal best
        if best is None or score > best[0]:
            best = (score, tokens, reason, start)

    prefixes = [_Prefix([], [], 0.0, 0)]
    while prefixes:
        options: list[tuple[float, int, int]] = []  # (score, prefix index, next token)
        for i, pre in enumerate(prefixes):
            row = logprobs[pre.row]
            length = len(pre.tokens)
            if length:
                start = pre.ends[0] - length + 1
                follow = {context_ids[j + 1] for j in pre.ends if j + 1 < n and context_ids[j + 1] < vocab}
                if length == max_new_tokens:
                    consider(pre.score, pre.tokens, "length", start)
                    continue
                if eos is not None:
                    consider(pre.score + float(row[eos]), pre.tokens + [eos], "eos", start)
                elif not follow:
                    consider(pre.score, pre.tokens, "span-end", start)
            else:
                follow = set(starts)
            options.extend((pre.score + float(row[t]), i, t) for t in follow)
        options.sort(key=lambda o: o[0], reverse=True)
        options = [o for o in options if best is None or o[0] > best[0]][:num_beams]
        if not options:
            break
        new = []
        for r, (score, i, t) in enumerate(options):
            pre = prefixes[i]
            ends = (
                [j + 1 for j in pre.ends if j + 1 < n and context_ids[j + 1] == t]
                if pre.tokens
                else starts[t]
            )
            new.append(_Prefix(pre.tokens + [t], ends, score, r))
        logprobs = lm.step([prefixes[i].row for _, i, _ in options], [t for _, _, t in options])
        prefixes = new
    assert best is not None
    score, tokens, reason, start = best
    return tokens, score, reason, start


@register_strategy(
    "exact-extract",
    "exact-extract span decoding for extractive QA: the answer is a verbatim span of the context "
    "(--extract-from), greedy, with its log-prob; lossy",
)
class ExactExtract(Strategy):
    def __init__(
        self,
        ctx,
        num_beams: Annotated[int, "span prefixes searched at once (1: greedy)", at_least(1)] = 4,
    ) -> None:
        super().__init__(ctx)
        self.num_beams = num_beams

    def context_ids(self, prompt_ids: list[int], context: str | None) -> list[int]:
        tok = self.loaded.tokenizer
        if context is not None:
            return tok.encode(context, add_special_tokens=False)
        special = set(getattr(tok, "all_special_ids", []) or [])
        return [t for t in prompt_ids if t not in special]

    def decode(self, prompt_ids, *, max_new_tokens, context=None) -> StrategyOutput:
        lm = RowsLM(self.loaded)
        eos = set(self.loaded.eos_token_ids)
        ctx_ids = self.context_ids(prompt_ids, context)
        tokens, score, reason, start = extract_span(
            lm, prompt_ids, ctx_ids, max_new_tokens=max_new_tokens, eos_ids=eos, num_beams=self.num_beams
        )
        span = len(tokens) - (reason == "eos")
        return StrategyOutput(
            token_ids=tokens,
            finish_reason=reason,
            score=score,
            forwards=lm.forwards,
            stats={"span_start_token": start, "span_tokens": span, "context_tokens": len(ctx_ids)},
        )
