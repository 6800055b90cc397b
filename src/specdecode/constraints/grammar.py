"""Compiling a constraint (JSON schema, regular expression, Lark grammar) for a model's tokenizer.

llguidance turns the constraint into a grammar over bytes and matches it against the
tokenizer's vocabulary: a :class:`Constraint` is that compiled grammar plus the tokenizer it
was checked against, ready to start one matcher per generation (:meth:`Constraint.matcher`).
Every problem (a schema that is not JSON, an invalid regex, a Lark error, a tokenizer
llguidance cannot read, a constraint no token of this tokenizer can begin) is one
:class:`SpecDecodeError` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from specdecode.errors import SpecDecodeError
from specdecode.sampling import SamplingConfig

# JSON output laid out one way (", " between items, ": " after keys, no other white space):
# the keys and punctuation of a schema's objects are then forced, so jump-forward commits them
# without the model choosing; the schema's own "x-guidance" object overrides these.
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
KINDS = ("json_schema", "regex", "grammar")
_WHAT = {"json_schema": "the JSON schema", "regex": "the regex", "grammar": "the Lark grammar"}


def _llguidance():
    import llguidance

    return llguidance


def one_line(message: str) -> str:
    """llguidance's multi-line diagnostics as one line: the first line, plus any ``error:`` line
    (a regex parse error puts the reason there)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    picked = [lines[0]] + [ln for ln in lines[1:] if ln.lower().startswith("error:")]
    text = "; ".join(picked)
    return text if len(text) <= 300 else text[:297] + "..."


@lru_cache(maxsize=8)
def _tokenizer_for(tokenizer, eos: tuple[int, ...], n_vocab: int | None):
    from llguidance.hf import from_tokenizer

    try:
        return from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos) or None)
    except Exception as e:  # llguidance names the part of the tokenizer it cannot read
        raise SpecDecodeError(
            "constrained generation cannot use this model's tokenizer "
            f"({type(tokenizer).__name__}): {one_line(str(e))}; llguidance reads fast Hugging Face "
            "tokenizers with a byte-level or SentencePiece (byte-fallback) decoder"
        ) from None


def llg_tokenizer(loaded):
    """The llguidance tokenizer for ``loaded`` (a :class:`~specdecode.models.loader.LoadedModel`),
    built once per tokenizer (about 0.4 s for a 49k vocabulary) and cached."""
    config = getattr(loaded.model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None and config is not None and hasattr(config, "get_text_config"):
        vocab = getattr(config.get_text_config(), "vocab_size", None)
    n_vocab = int(vocab) if vocab is not None and int(vocab) > len(loaded.tokenizer) else None
    return _tokenizer_for(loaded.tokenizer, tuple(sorted(loaded.eos_token_ids)), n_vocab)


@dataclass(frozen=True)
class Constraint:
    """A grammar compiled and checked for one tokenizer; start a matcher per generation.

    ``kind`` is ``"json_schema"``, ``"regex"`` or ``"grammar"`` (Lark); ``grammar`` is the
    llguidance grammar text. ``jump_forward``: the tokens the grammar forces are drafted for
    free (verified in the same forward as the drafter's tree).
    """

    kind: str
    grammar: str = field(repr=False)
    tokenizer: object = field(repr=False, compare=False)
    jump_forward: bool = True

    def matcher(self):
        """A new ``llguidance.LLMatcher`` at the start of the grammar."""
        llg = _llguidance()
        return llg.LLMatcher(self.tokenizer, self.grammar, log_level=0)

    def guide(self, loaded, sampling):
        """One generation's state for the decoding loop (:class:`specdecode.constraints.guide.Guide`)."""
        from specdecode.constraints.guide import Guide

        return Guide(self, loaded.eos_token_ids, sampling)


def _grammar_text(json_schema, regex, grammar) -> tuple[str, str]:
    llg = _llguidance()
    given = [(k, v) for k, v in zip(KINDS, (json_schema, regex, grammar), strict=True) if v is not None]
    if len(given) != 1:
        names = ", ".join(k for k, _ in given)
        raise SpecDecodeError(f"give one constraint (json_schema, regex or grammar), not several: {names}")
    kind, value = given[0]
    if kind == "json_schema":
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise SpecDecodeError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(value, (dict, bool)):
            raise SpecDecodeError(
                f"a JSON schema must be a JSON object (or true/false), got {type(value).__name__}"
            )
        try:
            return kind, llg.LLMatcher.grammar_from_json_schema(value, defaults=JSON_DEFAULTS)
        except (ValueError, TypeError) as e:
            raise SpecDecodeError(f"the JSON schema cannot be used: {one_line(str(e))}") from None
    if not isinstance(value, str):
        raise SpecDecodeError(f"{kind} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise SpecDecodeError(f"the {'regex' if kind == 'regex' else 'Lark grammar'} is empty")
    if kind == "regex":
        return kind, llg.LLMatcher.grammar_from_regex(value)
    return kind, llg.LLMatcher.grammar_from_lark(value)


def check_constraint(json_schema=None, regex: str | None = None, grammar: str | None = None) -> None:
    """The checks that need no tokenizer (JSON, the schema, regex and Lark syntax), so a command
    can refuse bad input before it loads a model. Raises :class:`SpecDecodeError`."""
    llg = _llguidance()
    kind, text = _grammar_text(json_schema, regex, grammar)
    error = llg.LLMatcher.validate_grammar(text)
    if error:
        raise SpecDecodeError(f"{_WHAT[kind]} is invalid: {one_line(error)}")


def compile_constraint(
    loaded, *, json_schema=None, regex: str | None = None, grammar: str | None = None, jump_forward=True
) -> Constraint:
    """Compile exactly one of ``json_schema`` (a dict or JSON text), ``regex`` or ``grammar``
    (Lark text) for ``loaded``'s tokenizer, and check that some token can begin it.

    Raises :class:`SpecDecodeError` with one line naming the problem.
    """
    llg = _llguidance()
    kind, text = _grammar_text(json_schema, regex, grammar)
    what = _WHAT[kind]
    tokenizer = llg_tokenizer(loaded)
    error = llg.LLMatcher.validate_grammar(text, tokenizer)
    if error:
        raise SpecDecodeError(f"{what} is invalid: {one_line(error)}")
    constraint = Constraint(kind, text, tokenizer, bool(jump_forward))
    guide = constraint.guide(loaded, SamplingConfig())
    mask = guide.allowed()
    if guide.matcher.is_error():
        raise SpecDecodeError(
            f"{what} cannot be used with this tokenizer: {one_line(guide.matcher.get_error())}"
        )
    if not mask.any():
        raise SpecDecodeError(
            f"{what} allows no first token with this model's tokenizer: no token's text can begin it"
        )
    return constraint
