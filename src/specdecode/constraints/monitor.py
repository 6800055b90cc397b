"""Monitor-guided decoding for Python (Agrawal et al., "Guiding Language Models of Code with
Global Context using Monitors", NeurIPS 2023): a static analyzer, consulted at trigger points,
says which identifiers may come next.

**Trigger points.** A ``.`` of attribute access (``ledger.``: after a name, ``)`` or ``]``, in
code, not in a string, a comment or a number) is a trigger point, and so is the space that
ends ``from pkg.mod import `` (or a ``, `` after names on such a line, where ``(`` and ``*``
may also come). There jedi completes the
code so far (the prompt's code, when it is code, plus the answer) against the repository, and
the names it lists are the only identifiers the model may write next: each token must continue
one of them, and the identifier may end (a token with a non-identifier byte) only where it is
one of them whole. Completions are computed once per trigger point (keyed by the code up to
and including its dot) and cached for the constraint's lifetime (one API call).

**Everywhere else nothing is constrained**: between trigger points, and at a trigger point
where jedi lists nothing (an object of unknown type), every token is allowed, so the output
is the unconstrained one until the model writes an attribute the monitor knows. Tokens are
simulated byte by byte, so a token that holds a dot and the start of a name (``).__``) is
checked like the two tokens it stands for.

A :class:`MonitorConstraint` plugs into the decoding loop like a grammar
(:class:`~specdecode.constraints.Constraint`): its :class:`MonitorMatcher` answers the calls
the :class:`~specdecode.constraints.guide.Guide` makes of llguidance's matcher (consume,
validate, rollback, forced tokens, accepting), so every drafter's tree is pruned to valid
names before scoring, the rest of a name that only one completion fits is drafted for free
(jump-forward), and greedy output equals greedy decoding with the monitor's mask
(:meth:`MonitorMatcher.mask`) applied at every step.

>>> c = monitor_constraint(loaded, "python", "path/to/repo", code="from shop import Store\\ns = Store()\\n")
>>> decoder.generate_ids(ids, max_new_tokens=32, constraint=c)
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import torch

from specdecode.constraints.guide import Guide
from specdecode.errors import SpecDecodeError

LANGUAGES = ("python",)
VIRTUAL_FILE = "__specdecode_monitor__.py"  # where jedi is told the code lives (inside the repo)
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
IDENT = _WORD | frozenset(range(0x80, 0x100))  # identifier bytes (non-ASCII: part of a letter)
_DIGITS = frozenset(b"0123456789")
_OWNERS = _WORD | frozenset(b")]")  # what an attribute-access dot follows
_DOT, _SPACE = ord("."), ord(" ")
_INSTEAD = frozenset(b"(*")  # what may follow "from m import " instead of a name
# a from-import line up to a point where a name comes next: "from pkg.mod import " or "..., "
_IMPORT_LINE = re.compile(rb"[ \t]*from[ \t]+\.*[\w.]*[ \t]+import (?:[A-Za-z_]\w*, )*")
_BAD = object()  # a simulated state the monitor forbids
_JEDI = threading.Lock()  # jedi keeps process-wide caches: one completion at a time


def check_monitor(language: str | None, repo) -> Path:
    """The checks that need no model (a known language, a repository folder that exists);
    returns the folder. Raises :class:`SpecDecodeError`."""
    if language is None:
        raise SpecDecodeError(
            f"a repository ({repo}) is read by a monitor: give the language too (--monitor python)"
        )
    if language not in LANGUAGES:
        raise SpecDecodeError(f"unknown monitor language {language!r}: choose one of {', '.join(LANGUAGES)}")
    if repo is None or str(repo) == "":
        raise SpecDecodeError(f"the {language} monitor needs a repository folder (--repo DIR)")
    path = Path(repo).expanduser()
    if not path.exists():
        raise SpecDecodeError(f"the repository folder {str(repo)!r} does not exist")
    if not path.is_dir():
        raise SpecDecodeError(f"the repository {str(repo)!r} is not a folder")
    return path.resolve()


# ---- the static analyzer ----------------------------------------------------------------------
class Monitor:
    """jedi over one repository: the names valid after an attribute-access dot, cached per
    trigger point for the constraint that owns this monitor."""

    def __init__(self, repo: Path) -> None:
        import jedi
        import parso

        self.repo = repo
        self.project = jedi.Project(repo)
        self.path = repo / VIRTUAL_FILE
        self._grammar = parso.load_grammar()
        self._cache: dict[bytes, Names] = {}
        self.calls = 0  # jedi completions computed (cache misses), for the figures
        self.seconds = 0.0  # time spent in them

    def names(self, code: bytes) -> Names:
        """The names jedi lists after ``code``, which ends with a dot (none where that dot is
        not attribute access in code, or jedi cannot tell the object's type)."""
        hit = self._cache.get(code)
        if hit is None:
            start = time.perf_counter()
            hit = self._cache[code] = Names(self._complete(code))
            self.seconds += time.perf_counter() - start
        return hit

    def _complete(self, code: bytes) -> tuple[bytes, ...]:
        import jedi

        text = _code_part(code.decode("utf-8", "replace"))
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1])
        with _JEDI:
            self.calls += 1
            end = self._grammar.parse(text, error_recovery=True).get_last_leaf()  # the end marker
            last = end.get_previous_leaf()
            if text.endswith("."):
                if end.prefix or last is None or last.type != "operator" or last.value != ".":
                    return ()  # the dot is in a comment, a string or a number
            elif end.prefix != " " or last is None or (last.type, last.value) not in _IMPORT_LEAVES:
                return ()  # "import " or ", " not in code
            try:
                found = jedi.Script(text, path=self.path, project=self.project).complete(line, column)
            except Exception:  # jedi's inference has its own bugs: treat as "knows nothing"
                return ()
        return tuple(
            sorted(
                {
                    c.name.encode()
                    for c in found
                    if c.type not in ("keyword", "path") and c.name.isidentifier()
                }
            )
        )


_IMPORT_LEAVES = {("keyword", "import"), ("operator", ",")}


def _code_part(text: str) -> str:
    """The code of ``text``: what follows its last Markdown fence line (a chat reply's
    ```` ```python ```` block), else all of it."""
    at = text.rfind("\n```")
    start = 0 if text.startswith("```") and at < 0 else at + 1 if at >= 0 else -1
    if start < 0:
        return text
    newline = text.find("\n", start)
    return "" if newline < 0 else text[newline + 1 :]


class Names:
    """The names valid at one trigger point: sorted (for prefix search) and as a set."""

    __slots__ = ("sorted", "whole")

    def __init__(self, names: tuple[bytes, ...]) -> None:
        self.sorted = names
        self.whole = frozenset(names)

    def __bool__(self) -> bool:
        return bool(self.sorted)

    def starting(self, part: bytes) -> list[bytes]:
        """The names that begin with ``part``."""
        i = bisect_left(self.sorted, part)
        out = []
        while i < len(self.sorted) and self.sorted[i].startswith(part):
            out.append(self.sorted[i])
            i += 1
        return out

    def continues(self, part: bytes) -> bool:
        i = bisect_left(self.sorted, part)
        return i < len(self.sorted) and self.sorted[i].startswith(part)


class _Site:
    """A trigger point: the code up to its dot (or the space after ``import``); its names asked
    of jedi only when needed. ``empty_ok``: ``(`` or ``*`` may come instead of a name
    (``from m import (``)."""

    __slots__ = ("monitor", "code", "empty_ok", "_names")

    def __init__(self, monitor: Monitor, code: bytes, empty_ok: bool = False) -> None:
        self.monitor, self.code, self.empty_ok, self._names = monitor, code, empty_ok, None

    def ends(self, part: bytes, byte: int | None = None) -> bool:
        """Whether the name may end after ``part``, followed by ``byte`` (None: the end)."""
        return part in self.names.whole or (self.empty_ok and not part and byte in _INSTEAD)

    @property
    def names(self) -> Names:
        if self._names is None:
            self._names = self.monitor.names(self.code)
        return self._names


# ---- the tokenizer's side ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TokenTable:
    """Each token's bytes, indexed for the masks (built once per tokenizer)."""

    texts: tuple[bytes, ...]  # [vocab] (b"" for special tokens, and any llguidance has no bytes for)
    special: torch.Tensor  # bool [vocab]
    by_text: dict[bytes, tuple[int, ...]]
    ordered: tuple[bytes, ...]  # the non-special texts, sorted (for prefix search)
    ordered_ids: tuple[int, ...]
    opens_free: torch.Tensor  # bool [vocab]: not special, first byte outside identifiers
    dotted: tuple[int, ...]  # tokens that may open a trigger before their last byte: simulated
    spaced: torch.Tensor  # bool [vocab]: tokens that begin with a space
    space_then_free: torch.Tensor  # bool [vocab]: a space, then a byte outside identifiers
    eos_tokens: tuple[int, ...] = ()  # (what the Guide reads of a tokenizer: no grammar-only EOS)

    @property
    def vocab_size(self) -> int:
        return len(self.texts)


@lru_cache(maxsize=8)
def _table(llg_tok) -> TokenTable:
    n = llg_tok.vocab_size
    texts = tuple(b"" if llg_tok.is_special_token(i) else llg_tok.decode_bytes([i]) for i in range(n))
    special = torch.tensor([llg_tok.is_special_token(i) for i in range(n)], dtype=torch.bool)
    by_text: dict[bytes, list[int]] = {}
    for i, t in enumerate(texts):
        if t:
            by_text.setdefault(t, []).append(i)
    pairs = sorted((t, i) for i, t in enumerate(texts) if t)
    opens_free = torch.tensor([bool(t) and t[0] not in IDENT for t in texts], dtype=torch.bool)
    inner = re.compile(rb"(?:\.|[,t] ).", re.S)  # a dot, or a space after "import"/",", then more
    dotted = tuple(i for i, t in enumerate(texts) if inner.search(t))
    spaced = torch.tensor([t[:1] == b" " for t in texts], dtype=torch.bool)
    space_then_free = torch.tensor([t[:1] == b" " and len(t) > 1 and t[1] not in IDENT for t in texts])
    return TokenTable(
        texts, special, {t: tuple(v) for t, v in by_text.items()},
        tuple(t for t, _ in pairs), tuple(i for _, i in pairs), opens_free, dotted, spaced, space_then_free,
    )  # fmt: skip


# ---- the constraint and its matcher -----------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MonitorConstraint:
    """A monitor for one generation's code: the repository's analyzer, the code before the
    answer, the tokenizer's table. ``kind`` is ``"monitor"``."""

    language: str
    repo: Path
    code: bytes = field(repr=False)  # the code the answer continues (b"" for a chat prompt)
    tokenizer: TokenTable = field(repr=False)
    eos: tuple[int, ...] = ()
    jump_forward: bool = True
    kind: str = "monitor"
    llg_tokenizer: object = field(default=None, repr=False)

    @cached_property
    def monitor(self) -> Monitor:
        return Monitor(self.repo)

    def matcher(self) -> MonitorMatcher:
        """A new matcher at the start of the answer."""
        return MonitorMatcher(self)

    def guide(self, loaded, sampling) -> MonitorGuide:
        return MonitorGuide(self, loaded.eos_token_ids, sampling)


def monitor_constraint(
    loaded, language: str, repo, code: str = "", jump_forward: bool = True
) -> MonitorConstraint:
    """A monitor for ``language`` over the repository folder ``repo``; ``code``: the code the
    answer continues (the raw prompt of a completion). Raises :class:`SpecDecodeError`."""
    from specdecode.constraints.grammar import llg_tokenizer

    path = check_monitor(language, repo)
    llg_tok = llg_tokenizer(loaded)
    return MonitorConstraint(
        language, path, code.encode("utf-8"), _table(llg_tok), tuple(sorted(loaded.eos_token_ids)),
        bool(jump_forward), llg_tokenizer=llg_tok,
    )  # fmt: skip


class MonitorMatcher:
    """The monitor's state at the committed tokens, with the calls the Guide makes of an
    llguidance matcher. State: the code so far and, inside an identifier that follows a
    trigger point, that point and the identifier's bytes so far."""

    def __init__(self, constraint: MonitorConstraint) -> None:
        self.c = constraint
        self.table = constraint.tokenizer
        self.monitor = constraint.monitor
        self.code = bytearray(constraint.code)
        self.state: tuple[_Site, bytes] | None = None  # (trigger point, identifier so far)
        self.state = self._start(bytes(self.code))
        self._undo: list[tuple[int, tuple[_Site, bytes] | None]] = []

    def _start(self, code: bytes):
        """The state at the end of the given code: inside a name after a trigger point where the
        code ends with ``obj.``, ``obj.na`` or ``from m import na`` (unconstrained where ``na``
        begins no name)."""
        word = len(code)
        while word > 0 and code[word - 1] in IDENT:
            word -= 1
        at = word - 1  # the trigger's byte, if any
        if at < 0:
            return None
        if code[at] == _DOT and _owner_before(bytearray(code[:at]), b".", 0):
            state = (_Site(self.monitor, code[: at + 1]), b"")
        elif code[at] == _SPACE and _import_open(bytearray(code[:at]), b" ", 0):
            state = (_Site(self.monitor, code[: at + 1], empty_ok=True), b"")
        else:
            return None
        state = self._run(state, code[word:])
        return None if state is _BAD else state

    # -- simulation
    def _run(self, state, text: bytes, special: bool = False):
        """The state after ``text`` follows the code at ``state``, or ``_BAD``."""
        code = self.code
        if special:  # a special token ends an identifier like a non-identifier byte would
            if state is not None and state[0].names and not state[0].ends(state[1]):
                return _BAD
            return None
        for i, b in enumerate(text):
            if state is not None:
                site, part = state
                names = site.names
                if not names:
                    state = None  # jedi knows nothing here: unconstrained
                elif b in IDENT:
                    part += bytes((b,))
                    if not names.continues(part):
                        return _BAD
                    state = (site, part)
                    continue
                elif not site.ends(part, b):
                    return _BAD
                else:
                    state = None
            if b == _DOT and _owner_before(code, text, i):
                state = (_Site(self.monitor, bytes(code) + text[: i + 1]), b"")
            elif b == _SPACE and _import_open(code, text, i):
                state = (_Site(self.monitor, bytes(code) + text[: i + 1], empty_ok=True), b"")
        return state

    def _text(self, token: int) -> tuple[bytes, bool]:
        t = self.table
        if token >= len(t.texts) or t.special[token]:
            return b"", True
        return t.texts[token], False

    # -- the llguidance-like interface the Guide uses
    def consume_token(self, token: int) -> bool:
        text, special = self._text(token)
        new = self._run(self.state, text, special)
        if new is _BAD:
            return False
        self._undo.append((len(self.code), self.state))
        self.code += text
        self.state = new
        return True

    def try_consume_tokens(self, tokens: list[int]) -> int:
        done = 0
        for t in tokens:
            if not self.consume_token(t):
                break
            done += 1
        return done

    def consume_tokens(self, tokens: list[int]) -> bool:
        return self.try_consume_tokens(tokens) == len(tokens)

    def validate_tokens(self, tokens: list[int]) -> int:
        done = self.try_consume_tokens(tokens)
        self.rollback(done)
        return done

    def rollback(self, n: int) -> None:
        for _ in range(n):
            size, self.state = self._undo.pop()
            del self.code[size:]

    def is_accepting(self) -> bool:
        """The answer may end here (not in the middle of a monitored name)."""
        s = self.state
        return s is None or not s[0].names or s[0].ends(s[1])

    def is_error(self) -> bool:
        return False

    def compute_ff_tokens(self) -> list[int]:
        """The rest of the name where exactly one completion fits (tokenized canonically,
        each token checked), else nothing."""
        s = self.state
        if s is None or not s[0].names:
            return []
        site, part = s
        fits = site.names.starting(part)
        if len(fits) != 1 or fits[0] == part:
            return []
        out = []
        for t in self.c.llg_tokenizer.tokenize_bytes(fits[0][len(part) :]):
            if not self.consume_token(t):
                break
            out.append(t)
        self.rollback(len(out))
        return out

    def mask(self) -> torch.Tensor:
        """The allowed tokens at this state: bool ``[vocab]`` (True = allowed)."""
        t, s = self.table, self.state
        if s is not None and not s[0].names:
            s = None
        if s is None:
            mask = torch.ones(len(t.texts), dtype=torch.bool)
            if _import_open(self.code, b" ", 0):  # "from m import": a leading space opens a trigger
                site = _Site(self.monitor, bytes(self.code) + b" ", empty_ok=True)
                if site.names:
                    mask[t.spaced] = False
                    self._allow(mask, site, b"", b" ")
        else:
            mask = torch.zeros(len(t.texts), dtype=torch.bool)
            self._allow(mask, s[0], s[1], b"")
            mask[t.special] = self.is_accepting()
        for token in t.dotted:  # a trigger inside the token: what follows it is checked too
            mask[token] = self._run(self.state, t.texts[token]) is not _BAD
        accepting = self.is_accepting()
        for e in self.c.eos:
            if e < len(mask):
                mask[e] = accepting
        return mask

    def _allow(self, mask: torch.Tensor, site: _Site, part: bytes, lead: bytes) -> None:
        """Set in ``mask`` the tokens ``lead`` + a valid continuation of the name ``part`` at
        ``site``: inside a name, or finishing one and going on with a non-identifier byte."""
        t = self.table
        ids: set[int] = set(t.by_text.get(lead, ())) if lead else set()  # the lead alone
        ends = False
        starts = [lead + bytes((b,)) for b in _INSTEAD] if site.empty_ok and not part else []
        for key in starts:  # "(" or "*" instead of a name, and whatever follows in the token
            j = bisect_left(t.ordered, key)
            while j < len(t.ordered) and t.ordered[j].startswith(key):
                ids.add(t.ordered_ids[j])
                j += 1
        for name in site.names.starting(part):
            rest = name[len(part) :]
            for k in range(1, len(rest) + 1):  # tokens inside the name
                ids.update(t.by_text.get(lead + rest[:k], ()))
            if not rest:
                ends = True
                continue
            key = lead + rest
            j = bisect_left(t.ordered, key)  # tokens that finish it and go on
            while j < len(t.ordered) and t.ordered[j].startswith(key):
                text = t.ordered[j]
                if len(text) > len(key) and text[len(key)] not in IDENT:
                    ids.add(t.ordered_ids[j])
                j += 1
        if ends:  # the name may end here: any token that goes on outside identifiers
            mask |= t.space_then_free if lead else t.opens_free
        if ids:
            mask[list(ids)] = True


def _owner_before(code: bytearray, text: bytes, i: int) -> bool:
    """Whether the dot at ``text[i]`` (after ``code``) follows a name, ``)`` or ``]`` (and is
    not a number's, ``1.``)."""
    prev = text[i - 1] if i > 0 else (code[-1] if code else None)
    if prev is None or prev not in _OWNERS:
        return False
    if prev in b")]":
        return True
    # the first byte of the word before the dot: a digit makes it a number
    tail = bytes(code[-64:]) + text[:i]
    j = len(tail)
    while j > 0 and tail[j - 1] in IDENT:
        j -= 1
    return tail[j] not in _DIGITS


def _import_open(code: bytearray, text: bytes, i: int) -> bool:
    """Whether the space at ``text[i]`` (after ``code``) ends ``from m import `` or a ``, `` in
    such a line: a name from ``m`` comes next."""
    prev = text[i - 1] if i > 0 else (code[-1] if code else None)
    if text[i] != _SPACE or prev not in (ord("t"), ord(",")):
        return False
    tail = bytes(code[-256:]) + text[: i + 1]
    return _IMPORT_LINE.fullmatch(tail, tail.rfind(b"\n") + 1) is not None


class MonitorGuide(Guide):
    """The :class:`Guide` (pruning, jump-forward, masked verification) over a monitor."""

    def allowed(self) -> torch.Tensor:
        return self.matcher.mask()
