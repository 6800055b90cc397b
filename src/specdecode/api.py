"""The Python API: ``generate()`` for a whole result, ``stream()`` for text as it comes.

>>> import specdecode
>>> r = specdecode.generate("Name three primes.", method="pld", max_new_tokens=64)
>>> print(r.text, r.tokens_per_second, r.mean_accepted)

Models are loaded once per process (the loader memoizes), and decoders are cached per
(method, model, draft, options) so drafters that learn across prompts keep what they learned.
Calls may come from any number of threads, and streams may be interleaved: each generation
has its own KV cache and drafter state (see :class:`specdecode.engine.Decoder`), so each gives
what it would give alone.
For full control build a :class:`specdecode.engine.Decoder` with
:func:`specdecode.engine.build_decoder`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from specdecode.constraints import awrs, constraint_for
from specdecode.engine import Decoder, GenerationResult, Response, build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.loader import load_model
from specdecode.sampling import SamplingConfig
from specdecode.strategies.run import run_strategy  # noqa: F401  (the API of the lossy strategies)

_DECODERS: dict[tuple, Decoder] = {}
_DECODERS_LOCK = threading.Lock()  # one load per key, however many threads ask at once


def get_decoder(
    method: str = "ar",
    model: str | None = None,
    *,
    draft: str | None = None,
    options: dict | None = None,
    device: str | None = "auto",
    dtype: str | None = None,
    backend: str | None = None,
) -> Decoder:
    """A (cached) decoder for ``method`` on ``model`` (``None``/``"default"``: the embedded model);
    ``backend``: what runs the target, "transformers" (default) or "llama.cpp" (:mod:`specdecode.backends`)."""
    for name, value in (("method", method), ("model", model), ("draft", draft), ("device", device)):
        if value is not None and not isinstance(value, str):
            raise SpecDecodeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if options is not None and not isinstance(options, dict):
        raise SpecDecodeError(f"options must be a dict of method options, got {type(options).__name__}")
    # repr: a value of the wrong type still makes a key, and build_decoder names the problem
    key = (
        method,
        model,
        draft,
        tuple(sorted((str(k), repr(v)) for k, v in (options or {}).items())),
        device,
        dtype,
        backend,
    )
    with _DECODERS_LOCK:
        if key not in _DECODERS:
            target = load_model(model, device=device, dtype=dtype, backend=backend)
            draft_model = load_model(draft, device=str(target.device), dtype=dtype) if draft else None
            _DECODERS[key] = build_decoder(method, target, draft=draft_model, options=options)
        return _DECODERS[key]


def _stop_list(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]  # one stop string, not its characters
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise SpecDecodeError(f"stop must be a string or a list of strings, got {stop!r}")


def _prediction_ids(decoder: Decoder, prediction) -> list[int] | None:
    """Predicted Outputs: the text the answer is expected to resemble, as token ids."""
    if prediction is None or prediction == "":
        return None
    if not isinstance(prediction, str):
        raise SpecDecodeError(f"prediction must be a str, got {type(prediction).__name__}")
    return decoder.loaded.tokenizer.encode(prediction, add_special_tokens=False)


def _check_awrs(constraint_sampling, particles, json_schema, regex, grammar, temperature, top_k, top_p,
                method, prediction) -> None:  # fmt: skip
    """``constraint_sampling`` and ``particles`` checked before any model loads."""
    constrained = json_schema is not None or regex is not None or grammar is not None
    awrs.check_options(
        constraint_sampling, particles, constrained=constrained, temperature=temperature, top_k=top_k,
        top_p=top_p, method=method, prediction=prediction,
    )  # fmt: skip


def _monitor_args(monitor, repo, prompt: str, raw: bool, *grammars) -> tuple:
    """``constraint_for``'s monitor arguments, checked before any model loads (``grammars``:
    the json_schema, regex and grammar arguments, which a monitor excludes)."""
    if monitor is None and repo is None:
        return ()
    if any(g is not None for g in grammars):
        raise SpecDecodeError(
            "give a grammar constraint (json_schema, regex, grammar) or a monitor, not both"
        )
    from specdecode.constraints.monitor import check_monitor

    return (monitor, str(check_monitor(monitor, repo)), prompt if raw else "")


def _prepare(
    prompt, method, model, draft, options, device, dtype, raw, temperature, top_k, top_p, seed, coupling,
    backend=None,
):  # fmt: skip
    if not isinstance(prompt, str):
        hint = (
            " (decode it first, e.g. prompt.decode('utf-8'))"
            if isinstance(prompt, (bytes, bytearray))
            else ""
        )
        raise SpecDecodeError(f"the prompt must be a str, got {type(prompt).__name__}{hint}")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, coupling=coupling)
    decoder = get_decoder(
        method, model, draft=draft, options=options, device=device, dtype=dtype, backend=backend
    )
    return decoder, decoder.loaded.encode_prompt(prompt, raw=raw), sampling


def generate(
    prompt: str,
    *,
    model: str | None = None,
    method: str = "ar",
    draft: str | None = None,
    options: dict | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    coupling: str = "auto",
    prediction: str | None = None,
    json_schema: dict | str | None = None,
    regex: str | None = None,
    grammar: str | None = None,
    jump_forward: bool = True,
    monitor: str | None = None,
    repo: str | None = None,
    constraint_sampling: str = "mask",
    particles: int = 1,
    stop: str | list[str] | None = None,
    raw: bool = False,
    device: str | None = "auto",
    dtype: str | None = None,
    backend: str | None = None,
    strategy: str | None = None,
    context: str | None = None,
) -> GenerationResult:
    """Generate a reply to ``prompt``; returns the text with its figures (tokens/s, mean accepted...).

    ``strategy``: decode with a strategy that changes the output by design instead of a
    method (``"diverse-beam"``, ``"superposed"``, ``"exact-extract"`` with ``context``,
    ``"entropy-adaptive"`` with ``draft``); returns :func:`run_strategy`'s result then.

    ``prediction``: text the reply is expected to resemble (Predicted Outputs, e.g. the old
    version of a file being edited); it drafts where it matches, and the reply is exactly the
    one without it. ``coupling`` and ``seed``: see :mod:`specdecode.sampling`.

    ``json_schema`` (a dict or JSON text), ``regex`` or ``grammar`` (Lark text): the reply
    follows it (:mod:`specdecode.constraints`); greedy output is plain greedy decoding with the
    grammar's mask at every step. ``jump_forward``: draft the tokens the grammar forces.
    ``monitor`` (``"python"``) and ``repo`` (a folder): monitor-guided decoding of code
    (:mod:`specdecode.constraints.monitor`): after ``obj.`` only names the repository's static
    analysis finds; the code so far is the prompt (with ``raw``) plus the reply.
    ``constraint_sampling``: ``"mask"`` samples each token from the locally masked distribution;
    ``"awrs"`` samples by adaptive weighted rejection, with sequential Monte Carlo over
    ``particles`` (> 1) towards the global constrained distribution, without speculation
    (:mod:`specdecode.constraints.awrs`).
    """
    if strategy is not None or context is not None:
        if method != "ar" or temperature != 0 or prediction is not None or stop is not None:
            raise SpecDecodeError(
                "a strategy decodes greedily on its own: leave method, temperature, prediction and stop unset"
            )
        return run_strategy(
            prompt, strategy or "exact-extract", model=model, draft=draft, options=options,
            max_new_tokens=max_new_tokens, context=context, raw=raw, device=device, dtype=dtype,
        )  # fmt: skip
    _check_awrs(constraint_sampling, particles, json_schema, regex, grammar, temperature, top_k, top_p,
                method, prediction)  # fmt: skip
    code_monitor = _monitor_args(monitor, repo, prompt, raw, json_schema, regex, grammar)
    decoder, ids, sampling = _prepare(
        prompt, method, model, draft, options, device, dtype, raw, temperature, top_k, top_p, seed, coupling,
        backend,
    )  # fmt: skip
    if constraint_sampling == "awrs":
        return awrs.generate(
            decoder, ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=_stop_list(stop),
            constraint=constraint_for(decoder.loaded, json_schema, regex, grammar, jump_forward, *code_monitor),
            particles=particles,
        )  # fmt: skip
    return decoder.generate_ids(
        ids,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=_stop_list(stop),
        prediction=_prediction_ids(decoder, prediction),
        constraint=constraint_for(decoder.loaded, json_schema, regex, grammar, jump_forward, *code_monitor),
    )


def stream(
    prompt: str,
    *,
    model: str | None = None,
    method: str = "ar",
    draft: str | None = None,
    options: dict | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    coupling: str = "auto",
    prediction: str | None = None,
    json_schema: dict | str | None = None,
    regex: str | None = None,
    grammar: str | None = None,
    jump_forward: bool = True,
    monitor: str | None = None,
    repo: str | None = None,
    constraint_sampling: str = "mask",
    particles: int = 1,
    stop: str | list[str] | None = None,
    raw: bool = False,
    device: str | None = "auto",
    dtype: str | None = None,
    backend: str | None = None,
) -> Iterator[Response]:
    """Yield :class:`Response` pieces (text delta, token ids, finish reason on the last)."""
    _check_awrs(constraint_sampling, particles, json_schema, regex, grammar, temperature, top_k, top_p,
                method, prediction)  # fmt: skip
    code_monitor = _monitor_args(monitor, repo, prompt, raw, json_schema, regex, grammar)
    decoder, ids, sampling = _prepare(
        prompt, method, model, draft, options, device, dtype, raw, temperature, top_k, top_p, seed, coupling,
        backend,
    )  # fmt: skip
    if constraint_sampling == "awrs":
        yield from awrs.stream(
            decoder, ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=_stop_list(stop),
            constraint=constraint_for(decoder.loaded, json_schema, regex, grammar, jump_forward, *code_monitor),
            particles=particles,
        )  # fmt: skip
        return
    yield from decoder.stream(
        ids,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=_stop_list(stop),
        prediction=_prediction_ids(decoder, prediction),
        constraint=constraint_for(decoder.loaded, json_schema, regex, grammar, jump_forward, *code_monitor),
    )
