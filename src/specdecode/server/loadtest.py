"""A bounded load test of a running server through the official ``openai`` client.

``run_load(base_url, requests, concurrency)`` sends every request once, at most
``concurrency`` at a time, each as a stream with ``include_usage`` (so the time to the first
token is measured too), and returns each answer's text, latency and usage. It stops by itself:
every request has a timeout and the whole run a deadline. It only talks to a server on this
machine (a loopback address). The ``openai`` package comes with the ``test`` extra.
"""

from __future__ import annotations

import asyncio
import ipaddress
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Outcome:
    index: int
    text: str | None = None  # None when the request failed
    error: str | None = None
    finish_reason: str | None = None
    latency: float = 0.0  # seconds from sending to the last chunk
    first_token: float | None = None  # seconds from sending to the first text
    usage: dict = field(default_factory=dict)


@dataclass
class LoadReport:
    concurrency: int
    outcomes: list[Outcome]
    wall_seconds: float

    def summary(self) -> dict:
        ok = [o for o in self.outcomes if o.error is None]
        lat = sorted(o.latency for o in ok)
        ttft = sorted(o.first_token for o in ok if o.first_token is not None)
        tokens = sum(o.usage.get("completion_tokens", 0) for o in ok)
        ext = [o.usage.get("specdecode", {}) for o in ok]
        steps = sum(e.get("steps", 0) for e in ext)
        committed = sum(e.get("mean_accepted", 1.0) * e.get("steps", 0) for e in ext)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.outcomes),
            "ok": len(ok),
            "errors": len(self.outcomes) - len(ok),
            "wall_seconds": round(self.wall_seconds, 3),
            "latency_p50_s": round(percentile(lat, 50), 3),
            "latency_p95_s": round(percentile(lat, 95), 3),
            "first_token_p50_s": round(percentile(ttft, 50), 3),
            "completion_tokens": tokens,
            "tokens_per_second": round(tokens / self.wall_seconds, 2) if self.wall_seconds else 0.0,
            "requests_per_second": round(len(ok) / self.wall_seconds, 3) if self.wall_seconds else 0.0,
            "mean_accepted": round(committed / steps, 3) if steps else 1.0,
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation); 0.0 for no values."""
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[min(98, max(0, round(q) - 1))]


def check_loopback(base_url: str) -> None:
    """Refuse any server that is not on this machine."""
    host = urlsplit(base_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the load test only targets a loopback address (127.0.0.1, ::1), not {host!r}")


async def _one(client, index: int, request: dict, timeout: float) -> Outcome:
    """Send ``request`` (``endpoint``: chat or completions, the rest: create()'s arguments)."""
    body = {k: v for k, v in request.items() if k != "endpoint"}
    api = client.chat.completions if request.get("endpoint", "chat") == "chat" else client.completions
    out = Outcome(index)
    start = time.perf_counter()
    texts: list[str] = []
    try:
        stream = await api.create(
            stream=True, stream_options={"include_usage": True}, timeout=timeout, **body
        )
        async for chunk in stream:
            for choice in chunk.choices:
                piece = choice.delta.content if hasattr(choice, "delta") else choice.text
                if piece:
                    texts.append(piece)
                    if out.first_token is None:
                        out.first_token = time.perf_counter() - start
                out.finish_reason = choice.finish_reason or out.finish_reason
            if chunk.usage is not None:
                out.usage = chunk.usage.model_dump()
        out.text = "".join(texts)
    except Exception as e:  # counted as lost; the caller decides what that means
        out.error = f"{type(e).__name__}: {e}"
    out.latency = time.perf_counter() - start
    return out


async def _run(base_url: str, requests: list[dict], concurrency: int, timeout: float) -> LoadReport:
    from openai import AsyncOpenAI

    gate = asyncio.Semaphore(concurrency)
    async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:

        async def gated(i: int, request: dict) -> Outcome:
            async with gate:
                return await _one(client, i, request, timeout)

        start = time.perf_counter()
        outcomes = await asyncio.gather(*(gated(i, r) for i, r in enumerate(requests)))
        return LoadReport(concurrency, list(outcomes), time.perf_counter() - start)


def run_load(base_url: str, requests: list[dict], concurrency: int, *, timeout: float = 300.0) -> LoadReport:
    """Send ``requests`` to the server at ``base_url`` (loopback only), ``concurrency`` at a time."""
    check_loopback(base_url)
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    deadline = timeout * (len(requests) / concurrency + 1)
    return asyncio.run(asyncio.wait_for(_run(base_url, requests, concurrency, timeout), deadline))
