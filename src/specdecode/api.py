"""The Python API: ``generate()`` for a whole result, ``stream()`` for text as it comes.

>>> import specdecode
>>> r = specdecode.generate("Name three primes.", method="pld", max_new_tokens=64)
>>> print(r.text, r.tokens_per_second, r.mean_accepted)

Models are loaded once per process (the loader memoizes), and decoders are cached per
(method, model, draft, options) so drafters that learn across prompts keep what they learned.
For full control build a :class:`specdecode.engine.Decoder` with
:func:`specdecode.engine.build_decoder`.
"""

from __future__ import annotations

from collections.abc import Iterator

from specdecode.engine import Decoder, GenerationResult, Response, build_decoder
from specdecode.models.loader import load_model
from specdecode.sampling import SamplingConfig

_DECODERS: dict[tuple, Decoder] = {}


def get_decoder(
    method: str = "ar",
    model: str | None = None,
    *,
    draft: str | None = None,
    options: dict | None = None,
    device: str | None = "auto",
    dtype: str | None = None,
) -> Decoder:
    """A (cached) decoder for ``method`` on ``model`` (``None``/``"default"``: the embedded model)."""
    key = (method, model, draft, tuple(sorted((options or {}).items())), device, dtype)
    if key not in _DECODERS:
        target = load_model(model, device=device, dtype=dtype)
        draft_model = load_model(draft, device=str(target.device), dtype=dtype) if draft else None
        _DECODERS[key] = build_decoder(method, target, draft=draft_model, options=options)
    return _DECODERS[key]


def _prepare(prompt, method, model, draft, options, device, dtype, raw, temperature, top_k, top_p, seed):
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    decoder = get_decoder(method, model, draft=draft, options=options, device=device, dtype=dtype)
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
    stop: list[str] | None = None,
    raw: bool = False,
    device: str | None = "auto",
    dtype: str | None = None,
) -> GenerationResult:
    """Generate a reply to ``prompt``; returns the text with its figures (tokens/s, mean accepted...)."""
    decoder, ids, sampling = _prepare(
        prompt, method, model, draft, options, device, dtype, raw, temperature, top_k, top_p, seed
    )
    return decoder.generate_ids(ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop)


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
    stop: list[str] | None = None,
    raw: bool = False,
    device: str | None = "auto",
    dtype: str | None = None,
) -> Iterator[Response]:
    """Yield :class:`Response` pieces (text delta, token ids, finish reason on the last)."""
    decoder, ids, sampling = _prepare(
        prompt, method, model, draft, options, device, dtype, raw, temperature, top_k, top_p, seed
    )
    yield from decoder.stream(ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop)
