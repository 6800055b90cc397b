"""The decoding loop: one speculative step for every method, plain decoding included.

Layers, from the bottom: :meth:`Decoder.steps` yields the tokens each target forward
commits; :meth:`Decoder.stream` turns them into text deltas and stops on EOS, length or a
stop string; :meth:`Decoder.generate_ids` collects a :class:`GenerationResult`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field

import torch

from specdecode.backends import close_target, new_target
from specdecode.detokenize import IncrementalDetokenizer
from specdecode.drafters.base import Drafter, MethodContext, StepOutcome
from specdecode.errors import SpecDecodeError
from specdecode.models.pairing import check_draft
from specdecode.prediction import Prediction
from specdecode.registry import get_method
from specdecode.sampling import Sampler, SamplingConfig
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
    prediction_accepted: int = 0  # of ``accepted``, the tokens drafted from the request's prediction
    method: str | None = None  # on the first step: what decodes, where the method chose it (auto)
    finish: str | None = None  # "constraint": the grammar allows no next token (generation ends)


PHASES = ("draft", "forward", "verify", "learn")


@dataclass
class Response:
    """One streamed piece: the text and tokens new since the last piece."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "eos" | "length" | "stop" | "constraint" on the last piece


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
    # Predicted Outputs: prediction tokens accepted into the answer, and the rest of them
    prediction_accepted: int = 0
    prediction_rejected: int = 0
    # The method that decoded: ``method`` itself, or the one ``auto`` chose for this request.
    method_ran: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Decoder:
    """A method bound to a target model (and optional draft model); reusable across prompts.

    Each generation owns its state: a fresh KV cache (:class:`Target`), its own draws
    (:class:`specdecode.sampling.Sampler`) and a drafter instance of its own, so any number
    of generations can run at once, interleaved in one thread or in many, and each gives what
    it would give alone. What drafters learn across generations is shared on purpose: a
    concurrent generation gets a :meth:`Drafter.fork` of :attr:`drafter` (same learned
    objects), and one lock per decoder serializes every drafter call (``begin``, ``propose``,
    ``observe``, ``finish``; about a millisecond a step), while the target forwards run
    outside it. A generation run alone always uses :attr:`drafter` itself.
    """

    def __init__(self, method: str, target, drafter: Drafter) -> None:
        self.method = method
        self.loaded = target
        self.drafter = drafter  # serves one generation at a time; others use forks of it
        self._idle: list[Drafter] = [drafter]
        self._lock = threading.Lock()

    # ---- layer 1: steps -------------------------------------------------------------------
    def steps(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        limit: int,
        prediction: list[int] | None = None,
        constraint=None,
    ) -> Iterator[Step]:
        """Yield each forward's committed tokens; at most ``limit`` tokens in all.

        ``prediction``: token ids the answer is expected to resemble (Predicted Outputs), an
        extra draft source for this generation only (:class:`specdecode.prediction.Prediction`).
        ``constraint``: a :class:`specdecode.constraints.Constraint` the answer must follow
        (drafts pruned to it, forced tokens drafted, every verified row masked by it).
        """
        if limit <= 0:
            return
        with self._lock:
            drafter = self._idle.pop() if self._idle else self.drafter.fork()
        try:
            predictor = Prediction(prediction, self.loaded) if prediction else None
            yield from self._steps(drafter, list(prompt_ids), sampling, limit, predictor, constraint)
        finally:
            with self._lock:
                self._idle.append(drafter)

    @torch.inference_mode()  # torch toggles it around each resumption of the generator
    def _steps(
        self,
        drafter: Drafter,
        tokens: list[int],
        sampling: SamplingConfig,
        limit: int,
        predictor: Prediction | None,
        constraint=None,
    ):
        lock, loaded = self._lock, self.loaded
        target = new_target(loaded)  # this generation's KV cache, on the model's backend
        if drafter.reads_target:  # drafting from the target itself: read access, never write
            drafter.attach(target.reader(drafter.reads_target))
        sampler = Sampler(sampling, loaded.device)
        prompt = list(tokens)
        guide = check = None  # constrained generation: the grammar's state, and its verifier
        if constraint is not None:
            guide = constraint.guide(loaded, sampler.cfg)
            drafter, check = guide.wrap(drafter), guide.verify
            predictor = guide.wrap(predictor) if predictor is not None else None
        first = target.prefill(prompt)
        tokens.append(sampler.first(first if guide is None else guide.first(first), len(prompt)))
        if guide is not None:
            guide.start(tokens[-1])
        with lock:
            drafter.begin(prompt, sampler.cfg)  # under gumbel, with the seed its noise is keyed by
        try:
            yield Step([tokens[-1]], 0, 0, method=getattr(drafter, "method_ran", None))
            produced = 1
            max_context = loaded.max_context or 1 << 30
            clock = time.perf_counter
            cuda = torch.device(loaded.device).type == "cuda"
            while produced < limit:
                room = min(limit - produced - 1, max_context - len(tokens) - 1)
                t0 = clock()
                tree = predictor.propose(tokens, room) if predictor is not None and room >= 1 else None
                predicted = tree is not None and len(tree) > 0
                if not predicted:
                    with lock:
                        tree = drafter.propose(tokens, room) if room >= 1 else DraftTree.empty()
                t1 = clock()
                context = target.length
                logits = target.score(tokens[-1], tree)  # [n + 1, vocab_size]
                if cuda:
                    torch.cuda.synchronize(loaded.device)  # verify would wait for it anyway
                t2 = clock()
                verdict = (check or verify)(
                    tree, logits, sampling, sampler.gen, noise=sampler.noise, position=len(tokens)
                )
                target.commit(verdict.path)
                tokens.extend(verdict.tokens)
                if sampler.noise is not None:
                    sampler.noise.forget(len(tokens))
                t3 = clock()
                outcome = StepOutcome(tree, logits, verdict, tokens, t2 - t1, context)
                if predicted:
                    predictor.observe(outcome)
                else:
                    with lock:
                        drafter.observe(outcome)
                produced += len(verdict.tokens)
                phases = (t1 - t0, t2 - t1, t3 - t2, clock() - t3)
                finish = guide.finished if guide is not None else None
                yield Step(
                    verdict.tokens,
                    len(tree),
                    verdict.accepted,
                    phases,
                    verdict.accepted if predicted else 0,
                    finish=finish,
                )
                if guide is not None and (finish or guide.ended):
                    return  # the grammar is done (EOS committed) or allows nothing more
        finally:
            with lock:
                drafter.finish()
            close_target(target)

    # ---- layer 2: stream of responses -----------------------------------------------------
    def stream(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop: list[str] | None = None,
        stats: list[Step] | None = None,
        prediction: list[int] | None = None,
        constraint=None,
    ) -> Iterator[Response]:
        """Text deltas until EOS, ``max_new_tokens`` or a stop string.

        Text that could be the start of a stop string is held back until it is known not to be
        one, so no piece ever holds part of a stop string. The last piece has ``finish_reason``.
        """
        sampling = sampling or SamplingConfig()
        limit = self._check(prompt_ids, max_new_tokens)
        eos = self.loaded.eos_token_ids
        stop = [s for s in (stop or []) if s]
        detok = IncrementalDetokenizer(self.loaded.tokenizer)
        out: list[int] = []
        sent_text, sent_ids = 0, 0  # characters of detok.text and ids already yielded
        finish = "length"
        # closing(): however this loop ends, the generation's drafter is handed back at once
        with closing(self.steps(prompt_ids, sampling, limit, prediction, constraint)) as steps:
            for step in steps:
                if stats is not None:
                    stats.append(step)
                if _take(step.tokens, out, eos, max_new_tokens):
                    finish = "eos"
                elif step.finish:
                    finish = step.finish
                detok.add(out[len(detok.ids) :])
                done = finish != "length" or len(out) >= limit
                if done:
                    detok.flush()
                text = detok.text
                cut = _stop_at(text, stop, start=max(0, sent_text - max(map(len, stop), default=0)))
                if cut >= 0:
                    text, finish, done = text[:cut], "stop", True
                ready = len(text) if done else len(text) - _stop_prefix(text, stop)
                if ready > sent_text or done:
                    yield Response(text[sent_text:ready], out[sent_ids:], finish if done else None)
                    sent_text, sent_ids = ready, len(out)
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
        prediction: list[int] | None = None,
        constraint=None,
    ) -> GenerationResult:
        """The whole answer with its figures; ``prediction`` and ``constraint`` as in :meth:`steps`."""
        sampling = sampling or SamplingConfig()
        stats: list[Step] = []
        ids: list[int] = []
        finish = "length"
        start = time.perf_counter()
        if stop:
            pieces = list(
                self.stream(
                    prompt_ids,
                    max_new_tokens=max_new_tokens,
                    sampling=sampling,
                    stop=stop,
                    stats=stats,
                    prediction=prediction,
                    constraint=constraint,
                )
            )
            for piece in pieces:
                ids.extend(piece.token_ids)
            finish = pieces[-1].finish_reason if pieces else "length"
        else:  # the fast path: no detokenization until the end
            limit = self._check(prompt_ids, max_new_tokens)
            eos = self.loaded.eos_token_ids
            with closing(self.steps(prompt_ids, sampling, limit, prediction, constraint)) as steps:
                for step in steps:
                    stats.append(step)
                    if _take(step.tokens, ids, eos, max_new_tokens):
                        finish = "eos"
                        break
                    if step.finish:
                        finish = step.finish
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
            prediction_accepted=(accepted := sum(s.prediction_accepted for s in stats)),
            prediction_rejected=max(0, len(prediction) - accepted) if prediction else 0,
            method_ran=(stats[0].method if stats and stats[0].method else None) or self.method,
        )

    def _check(self, prompt_ids: list[int], max_new_tokens: int) -> int:
        if not prompt_ids:
            raise SpecDecodeError("the prompt is empty: give some text to continue")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise SpecDecodeError(f"max new tokens must be a whole number, got {max_new_tokens!r}")
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


def _stop_at(text: str, stop: list[str], start: int = 0) -> int:
    """Where the earliest stop string begins in ``text`` (searching from ``start``), or -1."""
    return min((i for i in (text.find(s, start) for s in stop if s) if i >= 0), default=-1)


def _stop_prefix(text: str, stop: list[str]) -> int:
    """The length of the longest end of ``text`` that begins some stop string (to hold back)."""
    best = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def build_decoder(method: str, target, *, draft=None, options: dict | None = None) -> Decoder:
    """The decoder for registered ``method`` on loaded ``target`` (and ``draft``), options validated."""
    spec = get_method(method)
    opts = spec.parse_options(options)
    check_draft(spec, draft, target)
    with torch.inference_mode():
        drafter = spec.factory(MethodContext(target, draft), **opts)
    return Decoder(method, target, drafter)
