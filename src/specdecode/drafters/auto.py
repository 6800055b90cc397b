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
        for m in self.methods:
            arm = here.get(m)
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
        self.tokens += len(outcome.verdict.tokens)
        self.step_s += (t2 - t0) + learn
        self.ar_s += one + verify

    def finish(self) -> None:
        self.active.finish()
        self.idle[self.method_ran].append(self.active)
        if self.steps and self.step_s > 0 and self.ar_s > 0:
            speedup = (self.tokens / self.step_s) / (self.steps / self.ar_s)
            self.chooser.record(self.work, self.method_ran, speedup)
