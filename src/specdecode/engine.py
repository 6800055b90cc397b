"""The decoding loop: one speculative step for every method, plain decoding included.

Layers, from the bottom: :meth:`Decoder.steps` yields the tokens each target forward
commits; :meth:`Decoder.stream` turns them into text deltas and stops on EOS, length or a
stop string; :meth:`Decoder.generate_ids` collects a :class:`GenerationResult`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from specdecode.budget import forward_costs
from specdecode.drafters.base import Drafter, MethodContext, StepOutcome
from specdecode.errors import SpecDecodeError
from specdecode.registry import get_method
from specdecode.sampling import SamplingConfig, pick
from specdecode.target import Target
from specdecode.tree import DraftTree
from specdecode.verify import verify


@dataclass
class Step:
    """Tokens committed by one target forward (the prefill's first token is step 0)."""

    tokens: list[int]
    drafted: int  # draft nodes scored
    accepted: int  # draft tokens accepted (the bonus token not counted)
    # Seconds spent in each phase of the step: drafting, the target forward, verifying and
    # committing, the drafter learning from the outcome (on CUDA the loop synchronizes after
    # the forward, so its kernels count as forward time).
    phases: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


PHASES = ("draft", "forward", "verify", "learn")


@dataclass
class Response:
    """One streamed piece: the text and tokens new since the last piece."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "eos" | "length" | "stop" on the last piece


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # new tokens only (EOS included when generation stopped on it)
    new_tokens: int
    seconds: float
    tokens_per_second: float
    method: str
    steps: int  # target forwards after the prefill
    mean_accepted: float  # tokens committed per target forward, bonus included
    accepted_lengths: list[int] = field(default_factory=list)  # per forward after the prefill
    drafted: int = 0  # draft nodes scored in all
    finish_reason: str = "length"
    prompt_tokens: int = 0
    # Seconds per phase summed over the steps after the prefill (see :attr:`Step.phases`).
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Decoder:
    """A method bound to a target model (and optional draft model); reusable across prompts."""

    def __init__(self, method: str, target, drafter: Drafter) -> None:
        self.method = method
        self.loaded = target
        self.target = Target(target)
        self.drafter = drafter

    # ---- layer 1: steps -------------------------------------------------------------------
    @torch.inference_mode()  # torch toggles it around each resumption of the generator
    def steps(self, prompt_ids: list[int], sampling: SamplingConfig, limit: int) -> Iterator[Step]:
        """Yield each forward's committed tokens; at most ``limit`` tokens in all."""
        if limit <= 0:
            return
        target, drafter = self.target, self.drafter
        gen = None if sampling.greedy else sampling.generator(self.loaded.device)
        tokens = list(prompt_ids)
        token = pick(target.prefill(tokens), sampling, gen)
        tokens.append(token)
        drafter.begin(list(prompt_ids), sampling)
        yield Step([token], 0, 0)
        produced = 1
        max_context = self.loaded.max_context or 1 << 30
        clock = time.perf_counter
        # Forward timings correct the cost curve that sizes the drafts (when a drafter uses one).
        costs = forward_costs(self.loaded)
        cuda = torch.device(self.loaded.device).type == "cuda"
        while produced < limit:
            room = min(limit - produced - 1, max_context - len(tokens) - 1)
            t0 = clock()
            tree = drafter.propose(tokens, room) if room >= 1 else DraftTree.empty()
            t1 = clock()
            logits = target.score(tokens[-1], tree)  # [n + 1, vocab]
            if cuda:
                torch.cuda.synchronize(self.loaded.device)  # verify would wait for it anyway
            t2 = clock()
            if costs is not None:
                costs.record(len(tree) + 1, len(tokens) - 1, t2 - t1)
            verdict = verify(tree, logits, sampling, gen)
            target.commit(verdict.path)
            tokens.extend(verdict.tokens)
            t3 = clock()
            drafter.observe(StepOutcome(tree, logits, verdict, tokens))
            produced += len(verdict.tokens)
            yield Step(verdict.tokens, len(tree), verdict.accepted, (t1 - t0, t2 - t1, t3 - t2, clock() - t3))

    # ---- layer 2: stream of responses -----------------------------------------------------
    def stream(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop: list[str] | None = None,
        stats: list[Step] | None = None,
    ) -> Iterator[Response]:
        """Text deltas until EOS, ``max_new_tokens`` or a stop string."""
        sampling = sampling or SamplingConfig()
        limit = self._check(prompt_ids, max_new_tokens)
        tok = self.loaded.tokenizer
        eos = self.loaded.eos_token_ids
        stop = [s for s in (stop or []) if s]
        out: list[int] = []
        sent_text, sent_ids = "", 0
        finish = "length"
        for step in self.steps(prompt_ids, sampling, limit):
            if stats is not None:
                stats.append(step)
            if _take(step.tokens, out, eos, max_new_tokens):
                finish = "eos"
            text = tok.decode(out, skip_special_tokens=True)
            cut = _stop_at(text, stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            if finish == "length" and len(out) < max_new_tokens and text.endswith("\ufffd"):
                continue  # a multi-byte character is still incomplete: wait for more tokens
            done = finish != "length" or len(out) >= max_new_tokens
            if text[len(sent_text) :] or done:
                yield Response(text[len(sent_text) :], out[sent_ids:], finish if done else None)
                sent_text, sent_ids = text, len(out)
            if done:
                return

    # ---- layer 3: the whole result --------------------------------------------------------
    def generate_ids(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop: list[str] | None = None,
    ) -> GenerationResult:
        sampling = sampling or SamplingConfig()
        stats: list[Step] = []
        ids: list[int] = []
        finish = "length"
        start = time.perf_counter()
        if stop:
            pieces = list(
                self.stream(
                    prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, stats=stats
                )
            )
            for piece in pieces:
                ids.extend(piece.token_ids)
            finish = pieces[-1].finish_reason if pieces else "length"
        else:  # the fast path: no detokenization until the end
            limit = self._check(prompt_ids, max_new_tokens)
            eos = self.loaded.eos_token_ids
            for step in self.steps(prompt_ids, sampling, limit):
                stats.append(step)
                if _take(step.tokens, ids, eos, max_new_tokens):
                    finish = "eos"
                    break
                if len(ids) >= max_new_tokens:
                    break
        seconds = time.perf_counter() - start
        text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _stop_at(text, stop or [])
        text = text[:cut] if cut >= 0 else text
        lengths = [len(s.tokens) for s in stats[1:]]
        return GenerationResult(
            text=text,
            token_ids=ids,
            new_tokens=len(ids),
            seconds=seconds,
            tokens_per_second=len(ids) / seconds if seconds > 0 else 0.0,
            method=self.method,
            steps=len(lengths),
            mean_accepted=sum(lengths) / len(lengths) if lengths else 1.0,
            accepted_lengths=lengths,
            drafted=sum(s.drafted for s in stats),
            finish_reason=finish,
            prompt_tokens=len(prompt_ids),
            phase_seconds={k: sum(s.phases[j] for s in stats[1:]) for j, k in enumerate(PHASES)},
        )

    def _check(self, prompt_ids: list[int], max_new_tokens: int) -> int:
        if not prompt_ids:
            raise SpecDecodeError("the prompt is empty: give some text to continue")
        if max_new_tokens <= 0:
            raise SpecDecodeError(f"max new tokens must be >= 1, got {max_new_tokens}")
        ctx = self.loaded.max_context
        if ctx is not None and len(prompt_ids) >= ctx:
            raise SpecDecodeError(
                f"the prompt has {len(prompt_ids)} tokens but the model's context holds {ctx}: shorten the prompt"
            )
        return max_new_tokens if ctx is None else min(max_new_tokens, ctx - len(prompt_ids))


def _take(tokens: list[int], out: list[int], eos: set[int], max_new_tokens: int) -> bool:
    """Append ``tokens`` to ``out`` up to ``max_new_tokens``; True when an EOS token ended it
    (the EOS is kept, as ``generate()`` keeps it)."""
    for t in tokens:
        out.append(t)
        if t in eos:
            return True
        if len(out) >= max_new_tokens:
            break
    return False


def _stop_at(text: str, stop: list[str]) -> int:
    """Where the earliest stop string begins in ``text``, or -1."""
    return min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)


def build_decoder(method: str, target, *, draft=None, options: dict | None = None) -> Decoder:
    """The decoder for registered ``method`` on loaded ``target`` (and ``draft``), options validated."""
    spec = get_method(method)
    opts = spec.parse_options(options)
    if spec.needs_draft and draft is None:
        raise SpecDecodeError(
            f"method {method!r} needs a draft model: pass --draft MODEL (or --draft default)"
        )
    if draft is not None and draft.device != target.device:
        raise SpecDecodeError(
            f"the draft model is on {draft.device} but the target is on {target.device}: load both on one device"
        )
    with torch.inference_mode():
        drafter = spec.factory(MethodContext(target, draft), **opts)
    return Decoder(method, target, drafter)
