"""Methods found by name: one registry, no ``if method == ...`` chains in the decoding loop."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from specdecode.errors import SpecDecodeError


@dataclass(frozen=True)
class Option:
    type: type
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None  # extra validation, e.g. lambda v: v >= 1
    requirement: str = ""  # words for the check, e.g. ">= 1"


@dataclass
class MethodSpec:
    name: str
    summary: str
    factory: Callable[..., Any]  # (ctx: MethodContext, **options) -> Drafter
    options: dict[str, Option] = field(default_factory=dict)
    needs_draft: bool = False
    module: str = ""

    def parse_options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        return parse_options(self, given)


_METHODS: dict[str, MethodSpec] = {}
_LOADED = False


def register(name: str, summary: str, *, options: dict[str, Option] | None = None, needs_draft: bool = False):
    """Class decorator: register a drafter class (constructed as ``cls(ctx, **options)``)."""

    def wrap(cls):
        if name in _METHODS and _METHODS[name].factory is not cls:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = MethodSpec(name, summary, cls, dict(options or {}), needs_draft, cls.__module__)
        return cls

    return wrap


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        importlib.import_module("specdecode.drafters")
        _LOADED = True


def list_methods() -> list[MethodSpec]:
    _load_all()
    return list(_METHODS.values())


def get_method(name: str) -> MethodSpec:
    _load_all()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(_METHODS)
        raise SpecDecodeError(
            f"unknown method {name!r}; known methods: {known} (see `specdecode methods`)"
        ) from None


def _has_type(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _convert(spec: MethodSpec, key: str, opt: Option, value: Any) -> Any:
    if isinstance(value, str) and opt.type is not str:
        try:
            if opt.type is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("1", "true", "yes")
            else:
                value = opt.type(value)
        except ValueError:
            raise SpecDecodeError(
                f"method {spec.name!r}: option {key!r} takes a {opt.type.__name__}, got {value!r}"
            ) from None
    elif not _has_type(value, opt.type):
        raise SpecDecodeError(
            f"method {spec.name!r}: option {key!r} takes a {opt.type.__name__}, "
            f"got {type(value).__name__} {value!r}"
        )
    if opt.check is not None and not opt.check(value):
        raise SpecDecodeError(
            f"method {spec.name!r}: option {key!r} must be {opt.requirement}, got {value!r}"
        )
    return value


def parse_options(spec: MethodSpec, given: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``given`` (values may be strings from the command line) against ``spec``'s options."""
    out = {k: o.default for k, o in spec.options.items()}
    for key, value in (given or {}).items():
        key = key.replace("-", "_")
        if key not in spec.options:
            takes = ", ".join(spec.options) or "no options"
            raise SpecDecodeError(f"method {spec.name!r} takes no option {key!r}; it takes: {takes}")
        out[key] = _convert(spec, key, spec.options[key], value)
    return out


def parse_option_strings(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecDecodeError(f"method option {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out
