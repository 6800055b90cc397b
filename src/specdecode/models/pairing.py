"""The one check of a method's draft model: there when the method needs one, and on the
target's device. Every path that builds a method (CLI, bench, baselines, the engine) calls
:func:`check_draft`, so the rule and its message live here only."""

from __future__ import annotations

from specdecode.errors import SpecDecodeError


def check_draft(spec, draft, target=None) -> None:
    """Raise a SpecDecodeError when method ``spec`` cannot run with ``draft``.

    ``spec``: anything with ``name`` and ``needs_draft`` (a registry or baseline MethodSpec).
    ``draft``: the loaded draft model, or before loading its name; None (or "") for none.
    ``target``: the loaded target; given, a loaded ``draft`` must be on its device.
    """
    if spec.needs_draft and not draft:
        raise SpecDecodeError(
            f"method {spec.name!r} needs a draft model: pass --draft MODEL (or --draft default)"
        )
    if target is not None and draft is not None and draft.device != target.device:
        raise SpecDecodeError(
            f"the draft model is on {draft.device} but the target is on {target.device}: "
            "load both on one device"
        )
