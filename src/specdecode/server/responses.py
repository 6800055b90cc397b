"""OpenAI's response objects: completions, chat completions, their stream chunks, and usage.

``usage`` holds OpenAI's ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` and
``completion_tokens_details`` (``accepted_prediction_tokens``, ``rejected_prediction_tokens``
for Predicted Outputs), and one extension object, ``usage.specdecode``, with the request's
speculative figures (see :func:`usage`).
"""

from __future__ import annotations

import json
import time
import uuid

from specdecode.engine import PHASES
from specdecode.server.scheduler import Tally

# the engine's reasons, OpenAI's words ("constraint": the response_format allowed no further token)
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "constraint": "stop"}


def usage(tally: Tally, method: str) -> dict:
    """OpenAI's usage object, with ``specdecode``: the method, target forwards after the
    prefill (``steps``), draft tokens scored (``drafted``) and accepted (``accepted``), tokens
    per forward with the bonus token (``mean_accepted``; 1.0 for plain decoding), and seconds
    waiting for a slot, in the prefill, in all, and per phase of the decoding steps."""
    return {
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "total_tokens": tally.prompt_tokens + tally.completion_tokens,
        "completion_tokens_details": {
            "accepted_prediction_tokens": tally.prediction_accepted,
            "rejected_prediction_tokens": tally.prediction_rejected,
            "reasoning_tokens": 0,
            "audio_tokens": 0,
        },
        "specdecode": {
            "method": method,
            "steps": tally.steps,
            "drafted": tally.drafted,
            "accepted": tally.accepted,
            "mean_accepted": round(tally.mean_accepted, 4),
            "queue_seconds": round(tally.queued_s, 4),
            "prefill_seconds": round(tally.prefill_s, 4),
            "seconds": round(tally.seconds, 4),
            "phase_seconds": {k: round(tally.phases[k], 4) for k in PHASES},
        },
    }


def sse(obj: dict | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = sse("[DONE]")


class Format:
    """The objects of one request's answer, for chat (``chat=True``) or completions."""

    def __init__(self, chat: bool, model: str, include_usage: bool = False) -> None:
        self.chat = chat
        self.model = model
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish: str | None, chunk: bool, role: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = (
                {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            )
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}

    def whole(self, text: str, finish_reason: str, tally: Tally, method: str) -> dict:
        """The non-streaming answer."""
        return {
            **self._head(chunk=False),
            "choices": [self._choice(text, FINISH[finish_reason], chunk=False)],
            "usage": usage(tally, method),
        }

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> str:
        """One stream event: a text delta, the role (chat's first chunk), or the finish."""
        finish = FINISH[finish_reason] if finish_reason else None
        obj = {**self._head(chunk=True), "choices": [self._choice(text, finish, chunk=True, role=role)]}
        if self.include_usage:
            obj["usage"] = None
        return sse(obj)

    def usage_chunk(self, tally: Tally, method: str) -> str:
        """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
        return sse({**self._head(chunk=True), "choices": [], "usage": usage(tally, method)})
