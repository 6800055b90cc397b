"""Reading OpenAI-style request bodies into :class:`GenRequest`, or a 400 that names the field.

Fields are of three kinds. Those that change the text and that this server implements are
read and checked (``messages``/``prompt``, ``max_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop``, ``stream``, ``n`` = 1, ``prediction``, chat's ``response_format``
(``json_object``, ``json_schema``: constrained generation), and the ``specdecode`` extension
object). Those that do not change the text (``user``, ``metadata``...) are accepted and
ignored. Those that would change it in a way this server does not implement
(``frequency_penalty``, ``logprobs``, ``tools``...) are accepted only at their neutral value.
Any other name is refused as OpenAI refuses it: "Unrecognized request argument supplied".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from specdecode.errors import SpecDecodeError
from specdecode.registry import get_method
from specdecode.sampling import COUPLINGS, MAX_SEED, SamplingConfig
from specdecode.server.errors import APIError, bad_request

MAX_STOP = 4  # stop strings per request, as OpenAI allows

# Accepted and ignored: they do not change what is generated.
IGNORED = {
    "user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
    "prompt_cache_retention", "safety_identifier",
}  # fmt: skip
# Accepted only at these values (None is always accepted: it means "not given").
NEUTRAL: dict[str, tuple] = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
}
COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options"}
COMMON |= {"n", "prediction", "specdecode"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "response_format"}
COMPLETION_FIELDS = COMMON | {"prompt"}
CHAT_NEUTRAL = set(NEUTRAL) - {"echo", "best_of", "suffix"}
COMPLETION_NEUTRAL = {"frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "echo"}
COMPLETION_NEUTRAL |= {"best_of", "suffix"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
EXTENSION_KEYS = ("method", "top_k", "coupling")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything over is a 400 (the queue's limit is a 429)."""

    max_tokens: int = 4096  # the most new tokens one request may ask for
    default_max_tokens: int = 256  # when the request does not say
    max_prompt_tokens: int | None = None  # None: the model's context less one
    default_temperature: float = 1.0  # OpenAI's default


@dataclass
class GenRequest:
    """One generation request, checked and tokenized."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    method: str
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    prediction: list[int] | None = None
    constraint: Any = None  # response_format's schema (a specdecode.constraints.Constraint)


@dataclass
class Served:
    """What parsing needs to know about the server: the model, its name, limits, methods."""

    loaded: Any  # specdecode.models.loader.LoadedModel
    model_id: str
    default_method: str
    limits: Limits
    has_draft: bool = False


# ---------------------------------------------------------------------------- the body


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object, or a 400 saying what is wrong with it."""

    def no_constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not UTF-8 (byte {e.start})", code="invalid_json") from None
    except ValueError as e:  # json.JSONDecodeError included
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_kind(body)}", code="invalid_json")
    return body


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _check_fields(body: dict, allowed: set[str], neutral: set[str]) -> None:
    for name, value in body.items():
        if name in allowed or name in IGNORED:
            continue
        if name in neutral:
            if value is not None and value not in NEUTRAL[name]:
                shown = ", ".join(json.dumps(v) for v in NEUTRAL[name])
                raise bad_request(
                    f"{name} is not supported by this server (only {shown} or null)",
                    param=name,
                    code="unsupported_parameter",
                )
            continue
        raise bad_request(f"Unrecognized request argument supplied: {name}", param=name)


# ---------------------------------------------------------------------------- typed fields


def _int(body: dict, name: str, low: int, high: int, default=None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {_kind(value)}", param=name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be from {low} to {high}, got {value}", param=name)
    return value


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number, got {_kind(value)}", param=name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be from {low} to {high}, got {value}", param=name)
    return float(value)


def _bool(body: dict, name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{param or name} must be true or false, got {_kind(value)}", param=param or name)
    return value


def _object(body: dict, name: str) -> dict:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{name} must be an object, got {_kind(value)}", param=name)
    return value


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad_request("stop must be a string or an array of strings", param="stop")
    if len(value) > MAX_STOP:
        raise bad_request(f"stop takes at most {MAX_STOP} strings, got {len(value)}", param="stop")
    return [s for s in value if s]


def _text_parts(value: Any, param: str) -> str:
    """A message content or prediction content: a string, or an array of text parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise bad_request(
            f"{param} must be a string or an array of text parts, got {_kind(value)}", param=param
        )
    texts = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            why = f"parts of type {kind!r} are not supported" if kind not in (None, "text") else "malformed"
            raise bad_request(f'{where}: {why} (a text part is {{"type": "text", "text": ...}})', param=where)
        texts.append(part["text"])
    return "".join(texts)


# ---------------------------------------------------------------------------- prompts


def chat_prompt(body: dict, served: Served) -> list[int]:
    """The messages through the tokenizer's chat template, with the assistant turn opened."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        got = "an empty array" if messages == [] else _kind(messages) if "messages" in body else "nothing"
        raise bad_request(f"messages must be a non-empty array of messages, got {got}", param="messages")
    turns = [_message(m, i) for i, m in enumerate(messages)]
    tok = served.loaded.tokenizer
    if not getattr(tok, "chat_template", None):
        raise bad_request(
            f"the model {served.model_id} has no chat template: use /v1/completions with a raw prompt, "
            "or start the server with --chat-template FILE",
            param="messages",
            code="no_chat_template",
        )
    try:
        text = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    except Exception as e:  # a template that refuses the conversation (e.g. roles out of order)
        raise bad_request(f"the chat template refused the messages: {e}", param="messages") from None


def _message(m: Any, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad_request(f"{where} must be an object, got {_kind(m)}", param=where)
    for key in m:
        if key not in ("role", "content", "name"):
            raise bad_request(f"{where}.{key} is not supported by this server", param=f"{where}.{key}")
    role = m.get("role")
    if role not in ROLES:
        raise bad_request(
            f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)}", param=f"{where}.role"
        )
    if m.get("content") is None:
        raise bad_request(f"{where}.content is missing", param=f"{where}.content")
    return {"role": ROLES[role], "content": _text_parts(m["content"], f"{where}.content")}


def completion_prompt(body: dict, served: Served) -> list[int]:
    """``prompt``: a string, an array of token ids, or an array holding one of these."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise bad_request(
                f"prompt: one prompt per request is supported, got {len(prompt)}", param="prompt"
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt is empty", param="prompt")
        return [int(i) for i in served.loaded.tokenizer(prompt)["input_ids"]]
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        vocab = len(served.loaded.tokenizer)
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(
                f"prompt: token id {bad} is outside the vocabulary (0 to {vocab - 1})", param="prompt"
            )
        return list(prompt)
    got = "an empty array" if prompt == [] else _kind(prompt) if "prompt" in body else "nothing"
    raise bad_request(f"prompt must be a string or an array of token ids, got {got}", param="prompt")


# ---------------------------------------------------------------------------- the request


def parse_chat(body: dict, served: Served) -> GenRequest:
    _check_fields(body, CHAT_FIELDS, CHAT_NEUTRAL)
    _check_model(body, served)
    prompt_ids = chat_prompt(body, served)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    request = _request(body, served, prompt_ids, name, "messages")
    request.constraint = _response_format(body, served)
    return request


def _response_format(body: dict, served: Served):
    """OpenAI's ``response_format``: ``text`` (none), ``json_object`` (any JSON object) or
    ``json_schema`` (``json_schema.schema``), compiled for the model's tokenizer."""
    fmt = _object(body, "response_format")
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = {"type": "object"}
    elif kind == "json_schema":
        spec = _object(fmt, "json_schema") if "json_schema" in fmt else None
        if not spec or "schema" not in spec:
            raise bad_request(
                "response_format.json_schema.schema is missing", param="response_format.json_schema"
            )
        schema = spec["schema"]
        if not isinstance(schema, (dict, bool)):
            raise bad_request(
                f"response_format.json_schema.schema must be an object, got {_kind(schema)}",
                param="response_format.json_schema.schema",
            )
    else:
        raise bad_request(
            'response_format.type must be "text", "json_object" or "json_schema"',
            param="response_format.type",
        )
    from specdecode.constraints import compile_constraint

    try:
        return compile_constraint(served.loaded, json_schema=schema)
    except SpecDecodeError as e:
        raise bad_request(str(e), param="response_format") from None


def parse_completion(body: dict, served: Served) -> GenRequest:
    _check_fields(body, COMPLETION_FIELDS, COMPLETION_NEUTRAL)
    _check_model(body, served)
    return _request(body, served, completion_prompt(body, served), "max_tokens", "prompt")


def _check_model(body: dict, served: Served) -> None:
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad_request(f"model must be a string, got {_kind(model)}", param="model")
    if model not in (served.model_id, "default"):
        raise APIError(
            404,
            f"The model '{model}' does not exist: this server serves '{served.model_id}'",
            param="model",
            code="model_not_found",
        )


def _request(
    body: dict, served: Served, prompt_ids: list[int], max_name: str, prompt_name: str
) -> GenRequest:
    limits = served.limits
    if _int(body, "n", 0, 1 << 31, 1) != 1:
        raise bad_request(
            f"n = {body['n']} is not supported: this server returns one choice (n = 1)", param="n"
        )
    max_tokens = _int(body, max_name, 1, limits.max_tokens)
    max_tokens = _fit_context(served, len(prompt_ids), max_tokens, max_name, prompt_name)
    ext = _extension(body, served)
    stream = _bool(body, "stream")
    options = _object(body, "stream_options")
    if options and not stream:
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")
    include_usage = _bool(options, "include_usage", "stream_options.include_usage")
    return GenRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        sampling=_sampling(body, ext, limits),
        method=ext.get("method") or served.default_method,
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
        prediction=_prediction(body, served),
    )


def _fit_context(
    served: Served, n_prompt: int, max_tokens: int | None, max_name: str, prompt_name: str
) -> int:
    """``max_tokens`` checked against the context; the default is cut to fit it."""
    ctx = served.loaded.max_context
    most = served.limits.max_prompt_tokens or (ctx - 1 if ctx else None)
    if most is not None and n_prompt > most:
        raise bad_request(
            f"{prompt_name}: the prompt has {n_prompt} tokens, more than the {most} this server accepts "
            f"(the model's context holds {ctx})",
            param=prompt_name,
            code="context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = served.limits.default_max_tokens
        return max_tokens if ctx is None else max(1, min(max_tokens, ctx - n_prompt))
    if ctx is not None and n_prompt + max_tokens > ctx:
        raise bad_request(
            f"{max_name}: the model's context holds {ctx} tokens, but the prompt has {n_prompt} "
            f"and {max_name} asks for {max_tokens} more: ask for at most {ctx - n_prompt}",
            param=max_name,
            code="context_length_exceeded",
        )
    return max_tokens


def _extension(body: dict, served: Served) -> dict:
    """The ``specdecode`` object: ``method`` (a registered method), ``top_k``, ``coupling``."""
    ext = _object(body, "specdecode")
    for key in ext:
        if key not in EXTENSION_KEYS:
            raise bad_request(
                f"specdecode.{key} is not a known field (known: {', '.join(EXTENSION_KEYS)})",
                param=f"specdecode.{key}",
            )
    method = ext.get("method")
    if method is not None:
        if not isinstance(method, str):
            raise bad_request(
                f"specdecode.method must be a string, got {_kind(method)}", param="specdecode.method"
            )
        try:
            spec = get_method(method)
        except SpecDecodeError as e:
            raise bad_request(f"specdecode.method: {e}", param="specdecode.method") from None
        if spec.needs_draft and not served.has_draft:
            raise bad_request(
                f"specdecode.method: {method!r} needs a draft model; start the server with --draft MODEL",
                param="specdecode.method",
            )
    coupling = ext.get("coupling")
    if coupling is not None and coupling not in COUPLINGS:
        raise bad_request(
            f"specdecode.coupling must be one of {', '.join(COUPLINGS)}", param="specdecode.coupling"
        )
    return ext


def _sampling(body: dict, ext: dict, limits: Limits) -> SamplingConfig:
    temperature = _number(body, "temperature", 0.0, 2.0, limits.default_temperature)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0:
        raise bad_request("top_p must be greater than 0 (1 = off)", param="top_p")
    seed = _int(body, "seed", 0, MAX_SEED)
    top_k = _int(ext, "top_k", 0, 1 << 31, 0)
    try:
        return SamplingConfig(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            coupling=ext.get("coupling") or "auto",
        )
    except SpecDecodeError as e:  # e.g. a temperature too small to sample with
        param = "temperature" if "temperature" in str(e) else None
        raise bad_request(str(e), param=param) from None


def _prediction(body: dict, served: Served) -> list[int] | None:
    """Predicted Outputs: ``{"type": "content", "content": text or text parts}``, as token ids."""
    pred = _object(body, "prediction")
    if not pred:
        return None
    if pred.get("type") != "content":
        raise bad_request('prediction.type must be "content"', param="prediction.type")
    for key in pred:
        if key not in ("type", "content"):
            raise bad_request(f"prediction.{key} is not a known field", param=f"prediction.{key}")
    if pred.get("content") is None:
        raise bad_request("prediction.content is missing", param="prediction.content")
    text = _text_parts(pred["content"], "prediction.content")
    if not text:
        return None
    return [int(i) for i in served.loaded.tokenizer.encode(text, add_special_tokens=False)]
