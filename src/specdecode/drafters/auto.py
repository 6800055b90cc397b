"""``auto``: a lossless method chosen per request from the speed each one has shown.

The fastest method depends on the model, the hardware and the text: prompt lookup pays where
the answer copies the prompt, the merged tree of ``hybrid`` on most chat, and on a machine
where a forward over many tokens costs much more than over one, sometimes nothing pays. So
``auto`` decides request by request (never within one), among lossless methods that need no
draft model (default: ``hybrid``, ``suffix``, ``pld``) and plain decoding (``ar``):

- **What a request shows.** While a method decodes, each step's time is measured (drafting,
  the forward, verifying, learning) beside an estimate of what plain decoding would have spent
  on that step: the same forward's time scaled by ``t(1, L) / t(n + 1, L)`` from the
  calibrated latency curve (:mod:`specdecode.cost`, at the step's context ``L``) plus the
  step's own verify time. The request's *speedup over ar* is then
  ``tokens / step seconds`` over ``steps / ar seconds``: a ratio measured on the same
  forwards, so the machine's load cancels out and requests of different lengths compare.
- **Choosing.** Per workload (the prompt's length class: short prompts are chat, long ones
  copy more), each method keeps the running mean of its speedups; the next request goes to
  the method with the best upper confidence bound ``mean + explore * sqrt(ln N / n)`` (UCB1),
  where ``ar`` is always worth exactly 1 with no uncertainty. So a method that does not pay
  (below 1 once measured) loses to ``ar``, which is then chosen, and is retried only as its
  bound grows slowly with N. A workload not seen yet borrows the other workloads' means; the
  very first request goes to ``first`` (``hybrid``).
- **What a request would have shown the others (greedy).** Comparing methods on different
  requests is noisy: one request copies its prompt and another does not, so an early unlucky
  draw can hide the better method for good. After a greedy request, every candidate whose
  proposals depend on the tokens alone and write nothing shared (:attr:`Drafter.replayable`:
  ``pld``, ``suffix``) is *replayed* over the answer just produced: its proposal at each step
  is walked along the known answer (greedy acceptance is exactly that walk), and the step is
  costed from the latency curve, ``t(n + 1, L)``, plus the drafting time measured and the
  step overhead the request measured; a replayed method that did not run also learns from
  it which of its proposals would have been accepted, so that when ``auto`` switches to it,
  its draft sizes already fit the workload. Those methods are then ranked on the same requests, all
  of them, not on the few each happened to serve; a method that cannot be replayed
  (``hybrid``: its sources learn from the target's logits) keeps the measured record. Replays
  run before the finished request's drafter hands its text to the shared state, so a method
  never finds the answer in its own memory.
- **Lossless** whichever method runs: each is. Under sampling the distribution is exact; a
  seed gives the same text only where the methods do (greedy, the Gumbel coupling).

Each candidate method is built once and keeps what it learns across the requests it serves;
:attr:`last_ran` (and the engine's ``GenerationResult.method_ran``) names the one that ran.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Annotated

from specdecode.budget import policy_for
from specdecode.drafters.base import Drafter, StepOutcome
from specdecode.errors import SpecDecodeError
from specdecode.registry import get_method, in_range, register
from specdecode.tree import DraftTree
from specdecode.verify import greedy_path

REPLAY_EVERY = 4  # once a method has MEMORY replays on a workload, replay one request in this many

AR = "ar"
LONG_PROMPT = 256  # tokens: prompts at least this long are another workload
MEMORY = 20  # a method's mean follows its last ~20 requests (drafters learn; loads change)


def workload(prompt_ids: list[int]) -> str:
    """The workload class of a request, from its prompt alone."""
    return "long" if len(prompt_ids) >= LONG_PROMPT else "short"


@dataclass
class Arm:
    """What one method has shown on one workload: requests measured and their mean speedup."""

    n: int = 0
    mean: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.mean += (x - self.mean) / min(self.n, MEMORY)


@dataclass
class Chooser:
    """The learned state of ``auto``, shared by every generation of one decoder: per workload,
    per method, the measured speedups over ``ar``; and which method ran last."""

    methods: list[str]
    explore: float
    first: str
    arms: dict[str, dict[str, Arm]] = field(default_factory=dict)
    replays: dict[str, dict[str, Arm]] = field(default_factory=dict)  # per workload: replayed speedups
    requests: dict[str, int] = field(default_factory=dict)  # per workload, ar's included
    last_ran: str | None = None
    history: list[tuple[str, str, float]] = field(default_factory=list)  # (workload, method, speedup)

    def pooled(self, method: str, skip: str) -> Arm | None:
        """The method's record over the workloads other than ``skip``, if any."""
        arms = [a[method] for w, a in self.arms.items() if w != skip and method in a and a[method].n]
        if not arms:
            return None
        n = sum(a.n for a in arms)
        return Arm(n, sum(a.n * a.mean for a in arms) / n)

    def choose(self, work: str) -> str:
        here = self.arms.get(work, {})
        records = {}
        replayed = self.replays.get(work, {})
        for m in self.methods:
            arm = replayed.get(m) or here.get(m)  # the paired record first, where there is one
            records[m] = arm if arm is not None and arm.n else self.pooled(m, work)
        if all(r is None for r in records.values()):
            return self.first
        total = self.requests.get(work) or sum(self.requests.values())
        best, best_score = AR, 1.0  # plain decoding: a speedup of exactly 1, known
        for m, r in records.items():
            if r is None:  # never measured anywhere: try it once
                return m
            score = r.mean + self.explore * math.sqrt(math.log(total + 1) / r.n)
            if score > best_score:
                best, best_score = m, score
        return best

    def record(self, work: str, method: str, speedup: float) -> None:
        self.history.append((work, method, speedup))
        del self.history[:-1000]
        self.requests[work] = self.requests.get(work, 0) + 1
        if method != AR:
            self.arms.setdefault(work, {}).setdefault(method, Arm()).add(speedup)

    def record_replay(self, work: str, method: str, speedup: float) -> None:
        self.replays.setdefault(work, {}).setdefault(method, Arm()).add(speedup)

    def wants_replay(self, work: str, method: str) -> bool:
        arm = self.replays.get(work, {}).get(method)
        return arm is None or arm.n < MEMORY or self.requests.get(work, 0) % REPLAY_EVERY == 0


def replay_speedup(
    drafter: Drafter,
    prompt: list[int],
    answer: list[int],
    sampling,
    curve,
    overhead: float,
    *,
    learn: bool = False,
) -> float:
    """The speedup over plain decoding that ``drafter`` would have had on a greedy request
    that produced ``answer`` after ``prompt``: its proposals walked along the answer, each step
    costed ``t(n + 1, L) + drafting + overhead`` against ``t(1, L) + overhead`` per token for
    plain decoding. ``drafter`` must be :attr:`~Drafter.replayable`; a fork is used and
    :meth:`~Drafter.finish` is not called, so the answer does not join what it remembers. With
    ``learn``, each replayed proposal's verdict goes to its acceptance statistics
    (:meth:`~specdecode.drafters.base.CandidateDrafter.replayed`)."""
    d = drafter.fork()
    d.begin(prompt, sampling)
    tokens = list(prompt) + answer[:1]
    produced, spent, plain = 1, 0.0, 0.0
    clock = time.perf_counter
    while produced < len(answer):
        room = len(answer) - produced - 1
        t0 = clock()
        tree = d.propose(tokens, room) if room >= 1 else DraftTree.empty()
        draft = clock() - t0
        path = greedy_path(tree, answer[produced:])
        if learn and len(tree):
            d.replayed(tree, path)
        accepted = len(path)
        context = len(tokens) - 1
        step = accepted + 1
        spent += curve.t(len(tree) + 1, context) + draft + overhead
        plain += step * (curve.t(1, context) + overhead)
        tokens.extend(answer[produced : produced + step])
        produced += step
    return plain / spent if spent > 0 else 1.0


def parse_methods(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise SpecDecodeError("auto: methods is empty; give some of hybrid, suffix, pld, recycling, aded")
    if len(set(names)) != len(names):
        raise SpecDecodeError(f"auto: a method is named twice in {text!r}")
    for name in names:
        spec = get_method(name)  # unknown names: one line naming the known ones
        if name in ("auto", AR) or spec.needs_draft:
            raise SpecDecodeError(
                f"auto: {name!r} cannot be a candidate (ar is always one; methods needing a draft model "
                "and auto itself are not)"
            )
    return names


@register(
    "auto",
    "chooses per request among lossless methods (hybrid, suffix, pld, ar) by their measured speed",
)
class Auto(Drafter):
    def __init__(
        self,
        ctx,
        methods: Annotated[
            str, "candidate methods besides ar, comma-separated (no draft-model methods)"
        ] = "hybrid,suffix,pld",
        explore: Annotated[
            float, "weight of the exploration bonus (UCB1) on the mean measured speedup", in_range(0, 10)
        ] = 0.2,
        first: Annotated[str, "the method of the first request, before anything is measured"] = "hybrid",
    ) -> None:
        names = parse_methods(methods)
        if first not in (*names, AR):
            raise SpecDecodeError(
                f"auto: first={first!r} is not among the methods ({', '.join(names)}) or ar"
            )
        self.drafters: dict[str, Drafter] = {AR: Drafter()}
        for name in names:
            spec = get_method(name)
            self.drafters[name] = spec.factory(ctx, **spec.parse_options({}))
        self.chooser = Chooser(names, explore, first)
        # Idle drafters per method, shared by every fork of this one: a request run alone gets
        # the method's own drafter, concurrent ones a fork of it (as the engine does).
        self.idle: dict[str, list[Drafter]] = {m: [d] for m, d in self.drafters.items()}
        self.curve = policy_for(ctx.target).curve
        # What any candidate reads of the target's forwards: the engine attaches a reader for
        # all of it before begin(), which hands it on to the chosen method if that one reads.
        self.reads_target = frozenset().union(*(d.reads_target for d in self.drafters.values()))
        self._reader = None

    @property
    def last_ran(self) -> str | None:
        """The method that decoded the latest request (None before the first)."""
        return self.chooser.last_ran

    # ---- per generation ------------------------------------------------------------------
    def attach(self, reader) -> None:
        self._reader = reader  # per generation: assigned, never shared with a fork's

    def begin(self, prompt_ids, sampling) -> None:
        self.prompt, self.sampling = list(prompt_ids), sampling
        self.work = workload(prompt_ids)
        self.method_ran = self.chooser.choose(self.work)
        self.chooser.last_ran = self.method_ran
        idle = self.idle[self.method_ran]
        self.active = idle.pop() if idle else self.drafters[self.method_ran].fork()
        if self.active.reads_target:
            self.active.attach(self._reader)
        start = time.perf_counter()
        self.active.begin(prompt_ids, sampling)
        # the method's own start-up (indexing the prompt, say) counts against it
        self.step_s = time.perf_counter() - start
        self.tokens = self.steps = 0
        self.ar_s = 0.0
        self.overhead_s = 0.0  # verification and commit, summed over the steps
        self.answer: list[int] | None = None
        self._t0 = self._t1 = None

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        self._t0 = time.perf_counter()
        tree = self.active.propose(tokens, max_depth)
        self._t1 = time.perf_counter()
        return tree

    def observe(self, outcome: StepOutcome) -> None:
        t2 = time.perf_counter()
        self.active.observe(outcome)
        learn = time.perf_counter() - t2
        if self._t0 is None:  # a step the engine drafted itself (no room left, a prediction)
            return
        t0, t1 = self._t0, self._t1
        self._t0 = self._t1 = None
        forward = outcome.forward_seconds
        verify = max(0.0, t2 - t1 - forward)
        n = len(outcome.tree)
        if n and forward > 0:
            ctx = outcome.context
            one = forward * self.curve.t(1, ctx) / self.curve.t(n + 1, ctx)
        else:
            one = forward
        self.steps += 1
        self.overhead_s += verify
        self.answer = outcome.tokens  # the engine's committed tokens (extended in place)
        self.tokens += len(outcome.verdict.tokens)
        self.step_s += (t2 - t0) + learn
        self.ar_s += one + verify

    def finish(self) -> None:
        self._replay()  # before the active drafter hands this answer to the shared state
        self.active.finish()
        self.idle[self.method_ran].append(self.active)
        if self.steps and self.step_s > 0 and self.ar_s > 0:
            speedup = (self.tokens / self.step_s) / (self.steps / self.ar_s)
            self.chooser.record(self.work, self.method_ran, speedup)

    def _replay(self) -> None:
        """Under greedy decoding, each replayable candidate's speedup on this very request."""
        if self.answer is None or not self.steps or (self.sampling is not None and not self.sampling.greedy):
            return
        answer = self.answer[len(self.prompt) :]
        overhead = self.overhead_s / self.steps
        for m in self.chooser.methods:
            drafter = self.drafters[m]
            if getattr(drafter, "replayable", False) and self.chooser.wants_replay(self.work, m):
                # a method that did not run learns its acceptance here (the one that ran
                # learned from the real steps)
                x = replay_speedup(
                    drafter,
                    self.prompt,
                    answer,
                    self.sampling,
                    self.curve,
                    overhead,
                    learn=m != self.method_ran,
                )
                self.chooser.record_replay(self.work, m, x)
