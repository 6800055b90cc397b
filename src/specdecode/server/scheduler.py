"""One thread runs every model forward: requests wait in a bounded queue, the admitted ones
advance round robin, one streamed piece each.

- **Admission**: :meth:`Scheduler.submit` puts a :class:`Job` in the waiting queue, or raises a
  429 when ``max_queue`` jobs already wait (a 503 once the server drains for shutdown). Up
  to ``max_active`` jobs are generating at once; the others wait their turn in order.
- **Round robin**: each turn the thread asks every active job's ``decoder.stream(...)``
  generator for its next piece (one target forward, sometimes a few when a piece's text is
  held back; the first also runs the prefill). Each generation owns its KV cache and drafter
  state (see :class:`specdecode.engine.Decoder`), so interleaving them changes no output.
- **Delivery**: pieces and the final tally go to the request's handler through its asyncio
  queue (``loop.call_soon_threadsafe``); the thread never waits for a client.
- **Cancellation**: :meth:`Scheduler.cancel` only sets a flag (a generator must be closed by
  the thread that runs it); before each turn the thread closes the generators of cancelled
  jobs (``gen.close()``, which hands the drafter back) and drops them.
- **Shutdown**: :meth:`drain` refuses new jobs; :meth:`stop` ends the thread after the forward
  in progress and fails every job left with a 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from specdecode.engine import PHASES, Decoder, Response, Step
from specdecode.errors import SpecDecodeError
from specdecode.server.errors import APIError, bad_request, internal, queue_full, shutting_down
from specdecode.server.protocol import GenRequest

logger = logging.getLogger("specdecode.server")


@dataclass
class Tally:
    """A generation's figures, summed from its steps."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0  # target forwards after the prefill
    committed: int = 0  # tokens those forwards committed (bonus tokens included)
    drafted: int = 0
    accepted: int = 0
    prediction_tokens: int = 0
    prediction_accepted: int = 0
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    queued_s: float = 0.0  # waiting for a slot
    prefill_s: float = 0.0  # the first piece: the prefill forward and the first token
    seconds: float = 0.0  # from the slot to the last piece
    _prefilled: bool = False

    @property
    def mean_accepted(self) -> float:
        """Tokens committed per target forward after the prefill, bonus token included."""
        return self.committed / self.steps if self.steps else 1.0

    @property
    def prediction_rejected(self) -> int:
        return max(0, self.prediction_tokens - self.prediction_accepted)

    def add(self, steps: list[Step]) -> None:
        for step in steps:
            if not self._prefilled:  # the prefill's first token: not a decoding step
                self._prefilled = True
                continue
            self.steps += 1
            self.committed += len(step.tokens)
            self.drafted += step.drafted
            self.accepted += step.accepted
            self.prediction_accepted += getattr(step, "prediction_accepted", 0)
            for name, seconds in zip(PHASES, step.phases, strict=True):
                self.phases[name] += seconds


@dataclass
class Piece:
    response: Response


@dataclass
class Done:
    finish_reason: str  # the engine's: "eos" | "length" | "stop"
    tally: Tally


@dataclass
class Failed:
    error: APIError


Event = Piece | Done | Failed


class Job:
    """One request's generation: its inputs, where its events go, and its state."""

    def __init__(
        self, request: GenRequest, decoder: Decoder, loop: asyncio.AbstractEventLoop, endpoint: str = "chat"
    ) -> None:
        self.request = request
        self.endpoint = endpoint
        self.decoder = decoder
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = loop
        self.cancelled = False
        self.finished = False
        self.gen: Iterator[Response] | None = None
        self.stats: list[Step] = []
        self.tally = Tally(
            prompt_tokens=len(request.prompt_ids), prediction_tokens=len(request.prediction or [])
        )
        self.enqueued = time.perf_counter()
        self.started = 0.0

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to the request's handler (from the scheduler thread)."""
        if isinstance(event, (Done, Failed)):
            self.finished = True
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class Scheduler:
    """The thread that owns every generation (see the module docstring)."""

    def __init__(
        self,
        *,
        max_active: int = 8,
        max_queue: int = 64,
        on_step: Callable[[Job, list[Step], int, bool], None] | None = None,
        on_end: Callable[[Job, str], None] | None = None,
    ) -> None:
        self.max_active = max_active
        self.max_queue = max_queue
        self._on_step = on_step or (lambda job, steps, new_tokens, first: None)
        self._on_end = on_end or (lambda job, outcome: None)
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._cv = threading.Condition()
        self._draining = False  # set from a signal handler too: a plain flag, no lock
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="specdecode-scheduler", daemon=True)

    # ---- called from the event loop ------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def draining(self) -> bool:
        return self._draining

    def submit(self, job: Job) -> None:
        if self._draining or not self.alive:
            raise shutting_down()
        with self._cv:
            # max_active generating, max_queue waiting (jobs admitted into a free slot pass through
            # the waiting queue for a moment, so count both)
            if len(self._waiting) + len(self._active) >= self.max_active + self.max_queue:
                raise queue_full(self.max_queue)
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stop ``job``'s generation before its next forward (a no-op once it has ended)."""
        job.cancelled = True
        with self._cv:
            self._cv.notify()

    def drain(self) -> None:
        """Refuse new jobs (503); the ones already queued or running go on."""
        self._draining = True

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread after the forward in progress; jobs left get a 503."""
        self._draining = True
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- the scheduler thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._admit():
                for job in list(self._active):
                    if self._stopping:
                        break
                    try:
                        if job.cancelled:
                            self._end(job, "cancelled")
                        else:
                            self._advance(job)
                    except Exception as e:  # a bug outside the generation: this request fails
                        logger.exception("the scheduler failed on a request")
                        self._fail(job, internal(f"{type(e).__name__}: {e}"))
        finally:
            for job in list(self._active) + list(self._waiting):
                self._end(job, "cancelled" if job.cancelled else "shutdown")
            self._waiting.clear()

    def _admit(self) -> bool:
        """Wait for work; move waiting jobs into free slots. False when stopping."""
        with self._cv:
            while not self._stopping and not self._waiting and not self._active:
                self._cv.wait()
            if self._stopping:
                return False
            while self._waiting and len(self._active) < self.max_active:
                job = self._waiting.popleft()
                if job.cancelled:
                    self._end(job, "cancelled")
                    continue
                job.started = time.perf_counter()
                job.tally.queued_s = job.started - job.enqueued
                self._active.append(job)
            for job in [j for j in self._waiting if j.cancelled]:
                self._waiting.remove(job)
                self._end(job, "cancelled")
            return True

    def _advance(self, job: Job) -> None:
        """One piece of ``job``'s answer: usually one target forward."""
        request = job.request
        try:
            t0 = time.perf_counter()
            first = job.gen is None
            if first:
                job.gen = job.decoder.stream(
                    request.prompt_ids,
                    max_new_tokens=request.max_tokens,
                    sampling=request.sampling,
                    stop=request.stop,
                    stats=job.stats,
                    **({"prediction": request.prediction} if request.prediction else {}),
                    **({"constraint": request.constraint} if request.constraint is not None else {}),
                )
            piece = next(job.gen, None)
            if first:
                job.tally.prefill_s = time.perf_counter() - t0
        except SpecDecodeError as e:
            return self._fail(job, bad_request(str(e)))
        except Exception as e:  # a bug: the server goes on, this request gets a 500
            logger.exception("generation failed")
            return self._fail(job, internal(f"generation failed: {type(e).__name__}: {e}"))
        if piece is None:  # the stream ended without a finish reason (should not happen)
            piece = Response("", [], "length")
        steps, job.stats[:] = list(job.stats), []
        job.tally.add(steps)
        job.tally.completion_tokens += len(piece.token_ids)
        self._on_step(job, steps, len(piece.token_ids), first)
        if piece.text or piece.token_ids:
            job.deliver(Piece(piece))
        if piece.finish_reason is not None:
            job.tally.seconds = time.perf_counter() - job.started
            self._end(job, piece.finish_reason)

    def _fail(self, job: Job, error: APIError) -> None:
        job.deliver(Failed(error))
        self._end(job, "error")

    def _end(self, job: Job, outcome: str) -> None:
        """Take ``job`` out (closing its generator) and tell its handler, once."""
        if job in self._active:
            self._active.remove(job)
        if job.gen is not None:
            try:
                job.gen.close()  # hands the drafter back at once
            except Exception:
                logger.exception("closing a generation failed")
            job.gen = None
        if not job.finished:
            if outcome in ("eos", "length", "stop"):
                job.deliver(Done(outcome, job.tally))
            elif outcome != "error":
                job.deliver(Failed(shutting_down() if outcome == "shutdown" else _cancelled()))
        try:
            self._on_end(job, outcome)
        except Exception:
            logger.exception("recording a request's end failed")


def _cancelled() -> APIError:
    return APIError(499, "the request was cancelled", type="cancelled", code="cancelled")
