"""Decoding strategies that change the output by design (not speculative methods).

A speculative method (:mod:`specdecode.drafters`) only makes plain decoding faster: its output
is the target model's own. A strategy here decodes differently on purpose (several diverse
beams, several drafts from one pass, an answer copied from a given text, two models taking
turns), so its output is *not* ``ar``'s; each module says what it does preserve.

Strategies share the registry's option machinery (:func:`specdecode.registry.options_of`:
each option declared once, in the constructor's signature, as
``Annotated[type, "help", Check]``) but live in their own table, as the bench's transformers
baselines do, because they do not go through the speculative verifier. They are reachable as
``specdecode generate --strategy NAME``, :func:`specdecode.api.run_strategy` (or
``specdecode.generate(..., strategy=NAME)``) and ``specdecode bench --methods ar,NAME``.

A strategy class is constructed as ``cls(ctx, **options)`` (``ctx``: a
:class:`specdecode.drafters.base.MethodContext`) and implements :meth:`Strategy.decode`.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field

from specdecode.errors import SpecDecodeError
from specdecode.registry import MethodSpec, options_of

__all__ = [
    "Candidate",
    "Strategy",
    "StrategyOutput",
    "get_strategy",
    "is_strategy",
    "list_strategies",
    "register_strategy",
]

_STRATEGIES: dict[str, MethodSpec] = {}
_MODULES = ("diverse_beam", "superposed", "extract", "entropy_adaptive")
_LOADED = False


def register_strategy(name: str, summary: str, *, needs_draft: bool = False):
    """Class decorator: register a strategy class (options read from its constructor)."""

    def wrap(cls):
        if name in _STRATEGIES and _STRATEGIES[name].factory is not cls:
            raise ValueError(f"strategy {name!r} registered twice")
        _STRATEGIES[name] = MethodSpec(name, summary, cls, options_of(cls), needs_draft, cls.__module__)
        cls.name = name
        return cls

    return wrap


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        for module in _MODULES:
            importlib.import_module(f"specdecode.strategies.{module}")
        _LOADED = True


def list_strategies() -> list[MethodSpec]:
    _load_all()
    return list(_STRATEGIES.values())


def is_strategy(name: str) -> bool:
    _load_all()
    return name in _STRATEGIES


def get_strategy(name: str) -> MethodSpec:
    _load_all()
    try:
        return _STRATEGIES[name]
    except KeyError:
        known = ", ".join(_STRATEGIES)
        raise SpecDecodeError(f"unknown strategy {name!r}; known strategies: {known}") from None


@dataclass
class Candidate:
    """One of several outputs (a beam, a draft): new token ids and their score."""

    token_ids: list[int]
    score: float  # the strategy's own ranking score (see each strategy)
    text: str = ""


@dataclass
class StrategyOutput:
    """What a strategy produced for one prompt."""

    token_ids: list[int]  # the chosen output's new tokens (EOS included when it ended on one)
    finish_reason: str  # "eos" | "length" | "span-end" ...
    score: float | None = None
    candidates: list[Candidate] = field(default_factory=list)  # every beam / draft, best first
    forwards: int = 0  # model forward passes (all models together), prefill included
    stats: dict = field(default_factory=dict)  # strategy-specific figures
    text: str = ""
    seconds: float = 0.0
    prompt_tokens: int = 0
    strategy: str = ""

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["candidates"] = [c.__dict__ for c in self.candidates]
        d["new_tokens"] = self.new_tokens
        d["tokens_per_second"] = self.tokens_per_second
        return d


class Strategy:
    """Base class: ``decode`` does the work; ``run`` times it and adds the text; the bench calls
    ``generate_ids``."""

    name = "strategy"

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.loaded = ctx.target

    def decode(
        self, prompt_ids: list[int], *, max_new_tokens: int, context: str | None = None
    ) -> StrategyOutput:
        raise NotImplementedError

    def run(
        self, prompt_ids: list[int], *, max_new_tokens: int, context: str | None = None
    ) -> StrategyOutput:
        if max_new_tokens < 1:
            raise SpecDecodeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompt_ids:
            raise SpecDecodeError("the prompt is empty: give some text")
        start = time.perf_counter()
        out = self.decode(list(prompt_ids), max_new_tokens=max_new_tokens, context=context)
        out.seconds = time.perf_counter() - start
        out.prompt_tokens = len(prompt_ids)
        out.strategy = self.name
        tok = self.loaded.tokenizer
        out.text = tok.decode(out.token_ids, skip_special_tokens=True)
        for c in out.candidates:
            c.text = tok.decode(c.token_ids, skip_special_tokens=True)
        return out

    def generate_ids(self, prompt_ids: list[int], *, max_new_tokens: int, sampling):
        """The bench's runner interface (see :mod:`specdecode.bench.baselines`)."""
        from specdecode.bench.baselines import RunOutput

        require_greedy(self.name, sampling)
        out = self.run(prompt_ids, max_new_tokens=max_new_tokens)
        return RunOutput(
            token_ids=list(out.token_ids), accepted_lengths=None, finish_reason=out.finish_reason
        )


def require_greedy(name: str, sampling) -> None:
    if sampling is not None and not sampling.greedy:
        raise SpecDecodeError(
            f"strategy {name!r} is deterministic and does not sample: run it with temperature 0"
        )


def build_strategy(name: str, target, *, draft=None, options: dict | None = None) -> Strategy:
    """A strategy bound to ``target`` (and ``draft`` where it needs one), options validated."""
    from specdecode.drafters.base import MethodContext
    from specdecode.models.pairing import check_draft
    from specdecode.registry import parse_options

    spec = get_strategy(name)
    opts = parse_options(spec, options)
    check_draft(spec, draft, target)
    return spec.factory(MethodContext(target, draft if spec.needs_draft else None), **opts)
