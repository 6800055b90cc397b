"""``GET /metrics``: Prometheus text format, one registry per server (prometheus-client).

Counters grow as each step is taken, not only when a request ends, so a scrape during a long
generation sees its tokens. Labels: ``method`` (the decoding method of the request),
``endpoint`` (``chat`` or ``completions``), ``outcome`` (``stop``, ``length``, ``eos``,
``cancelled``, ``error``, ``shutdown``), ``phase`` (``prefill``, ``draft``, ``forward``,
``verify``, ``learn``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from specdecode.engine import PHASES, Step

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, scheduler) -> None:
        r = self.registry = CollectorRegistry()
        m = ["method"]
        self.requests = Counter(
            "specdecode_requests",
            "Generations ended, by outcome",
            ["endpoint", "method", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "specdecode_rejected_requests",
            "Requests answered with an error before generating",
            ["status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "specdecode_prompt_tokens", "Prompt tokens of generations", m, registry=r
        )
        self.completion_tokens = Counter("specdecode_completion_tokens", "Tokens generated", m, registry=r)
        self.forwards = Counter(
            "specdecode_target_forwards", "Target forwards after the prefill", m, registry=r
        )
        self.drafted = Counter(
            "specdecode_drafted_tokens", "Draft tokens scored by the target", m, registry=r
        )
        self.accepted = Counter(
            "specdecode_accepted_tokens", "Draft tokens accepted (bonus tokens not counted)", m, registry=r
        )
        self.prediction = Counter(
            "specdecode_prediction_tokens",
            "Predicted Outputs tokens, accepted or rejected",
            ["result"],
            registry=r,
        )
        self.phase_seconds = Counter(
            "specdecode_phase_seconds",
            "Seconds spent per phase of generation",
            ["method", "phase"],
            registry=r,
        )
        self.latency = Histogram(
            "specdecode_request_seconds",
            "Seconds from arrival to the last token",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "specdecode_queue_wait_seconds", "Seconds waiting for a slot", buckets=LATENCY_BUCKETS, registry=r
        )
        self.first_token = Histogram(
            "specdecode_time_to_first_token_seconds", "Seconds from arrival to the first token", m,
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        queue = Gauge("specdecode_queue_length", "Requests waiting for a slot", registry=r)
        queue.set_function(lambda: scheduler.waiting)
        active = Gauge("specdecode_active_generations", "Generations in progress", registry=r)
        active.set_function(lambda: scheduler.active)

    def on_step(self, job, steps: list[Step], new_tokens: int, first: bool) -> None:
        """Called by the scheduler thread after each piece: the steps it took, the tokens it
        added to the answer, whether it was the first (which began with the prefill)."""
        method = job.decoder.method
        if first:
            self.phase_seconds.labels(method, "prefill").inc(job.tally.prefill_s)
            self.first_token.labels(method).observe(job.tally.queued_s + job.tally.prefill_s)
        for step in steps[1:] if first else steps:
            self.forwards.labels(method).inc()
            self.drafted.labels(method).inc(step.drafted)
            self.accepted.labels(method).inc(step.accepted)
            for phase, seconds in zip(PHASES, step.phases, strict=True):
                self.phase_seconds.labels(method, phase).inc(seconds)
        self.completion_tokens.labels(method).inc(new_tokens)

    def on_end(self, job, outcome: str) -> None:
        """Called by the scheduler thread once per job, however it ended."""
        method, tally = job.decoder.method, job.tally
        self.requests.labels(job.endpoint, method, outcome).inc()
        self.prompt_tokens.labels(method).inc(tally.prompt_tokens)
        self.queue_wait.observe(tally.queued_s)
        if outcome in ("eos", "length", "stop"):
            self.latency.labels(method).observe(tally.queued_s + tally.seconds)
            if tally.prediction_tokens:
                self.prediction.labels("accepted").inc(tally.prediction_accepted)
                self.prediction.labels("rejected").inc(tally.prediction_rejected)

    def render(self) -> bytes:
        return generate_latest(self.registry)
