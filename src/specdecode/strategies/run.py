"""Running a strategy from text: the API's :func:`run_strategy` (re-exported by
:mod:`specdecode.api`) and what the CLI shares with it."""

from __future__ import annotations

from specdecode.errors import SpecDecodeError
from specdecode.strategies import StrategyOutput, build_strategy, get_strategy


def run_strategy(
    prompt: str,
    strategy: str,
    *,
    model: str | None = None,
    draft: str | None = None,
    options: dict | None = None,
    max_new_tokens: int = 256,
    context: str | None = None,
    raw: bool = False,
    device: str | None = "auto",
    dtype: str | None = None,
) -> StrategyOutput:
    """Decode ``prompt`` with a strategy that changes the output by design (see
    :mod:`specdecode.strategies`): ``"diverse-beam"``, ``"superposed"``, ``"exact-extract"``
    or ``"entropy-adaptive"`` (which needs ``draft``, the small model; ``model`` is the large).

    ``context`` (exact-extract): the text the answer must be copied from; the model is then
    asked ``prompt`` about it (:func:`specdecode.strategies.extract.extract_prompt`). Without
    it the span comes from the prompt itself.

    Returns a :class:`~specdecode.strategies.StrategyOutput`: ``text`` and ``token_ids`` of the
    chosen output, its ``score``, every beam or draft in ``candidates`` (best first), the
    strategy's figures in ``stats``, ``seconds``.

    >>> r = run_strategy("Name a color.", "diverse-beam", options={"num_beams": 4}, max_new_tokens=16)
    >>> [c.text for c in r.candidates]  # doctest: +SKIP
    """
    from specdecode.models.loader import load_model

    if not isinstance(prompt, str):
        raise SpecDecodeError(f"the prompt must be a str, got {type(prompt).__name__}")
    if not isinstance(strategy, str):
        raise SpecDecodeError(f"strategy must be a string, got {type(strategy).__name__} {strategy!r}")
    if context is not None and not isinstance(context, str):
        raise SpecDecodeError(f"context must be a str, got {type(context).__name__}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise SpecDecodeError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if options is not None and not isinstance(options, dict):
        raise SpecDecodeError(f"options must be a dict of strategy options, got {type(options).__name__}")
    spec = get_strategy(strategy)
    if context is not None and strategy != "exact-extract":
        raise SpecDecodeError(f"context is for the exact-extract strategy, not {strategy!r}")
    if context is not None and not context.strip():
        raise SpecDecodeError("the context to extract from is empty")
    from specdecode.models.pairing import check_draft

    check_draft(spec, draft)
    target = load_model(model, device=device, dtype=dtype)
    small = load_model(draft, device=str(target.device), dtype=dtype) if draft and spec.needs_draft else None
    runner = build_strategy(strategy, target, draft=small, options=options)
    if context is not None:
        from specdecode.strategies.extract import extract_prompt

        prompt = extract_prompt(context, prompt)
    ids = target.encode_prompt(prompt, raw=raw)
    return runner.run(ids, max_new_tokens=max_new_tokens, context=context)
