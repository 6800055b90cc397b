"""Prompt sets for the benchmark: the embedded Spec-Bench questions and any user JSONL file.

A prompt set is a list of :class:`Prompt`. Selection is deterministic: the first ``n`` prompts of
each category in file order, or ``n`` drawn with a fixed seed.

Spec-Bench groups its 80 MT-bench questions (8 categories x 10, ids 81-160) into one category,
"mt_bench", when it reports; that grouping is the default here too (``group_mt_bench=True``).
The raw MT-bench category names (writing, roleplay, ...) can still be asked for by name.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from specdecode.errors import SpecDecodeError

SPEC_BENCH = "spec-bench"
DATASETS = (SPEC_BENCH,)

MT_BENCH_CATEGORIES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
# The category names Spec-Bench reports, in its order.
SPEC_BENCH_CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
DEFAULT_CATEGORY = "default"


@dataclass(frozen=True)
class Prompt:
    """One prompt of a set: ``text`` is its first (or only) user turn; ``turns`` holds every
    user turn of a conversation, the first included (empty for a single-turn prompt)."""

    id: str
    category: str
    text: str
    turns: tuple[str, ...] = ()
    schema: str | None = None  # a JSON schema (JSON text) the answer must follow: constrained generation

    def user_turns(self, limit: int | None = None) -> list[str]:
        """The user turns to run, at most ``limit`` of them (None: all), the first always."""
        turns = list(self.turns) or [self.text]
        return turns if limit is None else turns[: max(1, limit)]


def spec_bench_path() -> Path:
    """The embedded copy of Spec-Bench's question.jsonl (Apache-2.0, see SPEC_BENCH_LICENSE.md)."""
    return Path(str(resources.files("specdecode") / "data" / "spec_bench.jsonl"))


def read_jsonl(path: str | Path, *, default_category: str = DEFAULT_CATEGORY) -> list[Prompt]:
    """Read prompts from a JSONL file.

    Each non-blank line is a JSON object with ``prompt`` (a string) or ``turns`` (a list of
    strings: the user turns of a conversation; the first is the prompt, and ``bench --turns``
    runs the others as follow-ups), and optionally ``category``, ``id`` / ``question_id`` and
    ``schema`` (a JSON schema the answer must follow: every method generates under it).
    Prompts without an id get their 1-based line number. Raises SpecDecodeError naming the
    file and line for anything malformed (lone surrogates such as ``"\\ud800"`` included), and
    for a file with no prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecDecodeError(f"prompt file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpecDecodeError(f"cannot read prompt file {path}: {e.strerror or e}") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is fine
    try:
        # "\n" only: str.splitlines() would also split inside a prompt at U+2028 and the like
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise SpecDecodeError(
            f"{path}, line {lineno}: not valid UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None

    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecDecodeError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise SpecDecodeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        text, turns = _prompt_text(obj, where)
        pid = obj.get("id", obj.get("question_id", lineno))
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise SpecDecodeError(f"{where}: 'id' must be a string or an integer")
        pid = str(pid)
        if pid in seen:
            raise SpecDecodeError(f"{where}: duplicate prompt id {pid!r}")
        seen.add(pid)
        category = obj.get("category", default_category)
        if not isinstance(category, str) or not category.strip():
            raise SpecDecodeError(f"{where}: 'category' must be a non-empty string")
        for name, value in (("id", pid), ("category", category)):
            _check_unicode(value, where, name)
        schema = obj.get("schema")
        if schema is not None and not isinstance(schema, (dict, bool)):
            raise SpecDecodeError(
                f"{where}: 'schema' must be a JSON schema (an object), got {type(schema).__name__}"
            )
        schema = json.dumps(schema) if schema is not None else None
        prompts.append(Prompt(id=pid, category=category.strip(), text=text, turns=turns, schema=schema))
    if not prompts:
        raise SpecDecodeError(f"prompt file {path} holds no prompts")
    return prompts


def _prompt_text(obj: dict, where: str) -> tuple[str, tuple[str, ...]]:
    """The prompt's first turn and all its turns (empty for a plain ``prompt``)."""
    if "prompt" in obj:
        text = obj["prompt"]
        if not isinstance(text, str):
            raise SpecDecodeError(f"{where}: 'prompt' must be a string")
        turns: tuple[str, ...] = ()
    elif "turns" in obj:
        raw = obj["turns"]
        if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
            raise SpecDecodeError(f"{where}: 'turns' must be a non-empty list of strings")
        for k, t in enumerate(raw[1:], start=2):
            if not t.strip():
                raise SpecDecodeError(f"{where}: turn {k} is empty")
            _check_unicode(t, where, f"turns[{k - 1}]")
        text, turns = raw[0], tuple(raw)
    else:
        raise SpecDecodeError(f"{where}: a line needs 'prompt' (a string) or 'turns' (a list of strings)")
    if not text.strip():
        raise SpecDecodeError(f"{where}: the prompt is empty")
    _check_unicode(text, where, "prompt" if "prompt" in obj else "turns")
    return text, turns


def _check_unicode(text: str, where: str, name: str) -> None:
    """JSON can escape a lone surrogate (``"\\ud800"``), which is no character: the tokenizer and
    the UTF-8 result files would fail on it later, so it is an error here, naming the line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        raise SpecDecodeError(
            f"{where}: {name!r} holds a lone surrogate \\u{c:04x} at character {e.start}, which is not "
            "a character; write the character itself or a complete surrogate pair"
        ) from None


def group_spec_bench(prompts: list[Prompt]) -> list[Prompt]:
    """Relabel the MT-bench categories as "mt_bench", as Spec-Bench reports them."""
    return [replace(p, category="mt_bench") if p.category in MT_BENCH_CATEGORIES else p for p in prompts]


def select(
    prompts: list[Prompt],
    *,
    categories: list[str] | None = None,
    n_per_category: int | None = None,
    seed: int | None = None,
) -> list[Prompt]:
    """Pick prompts deterministically.

    ``categories`` keeps only those categories (unknown names are an error), in the order
    given; otherwise categories keep their order of first appearance. ``n_per_category`` keeps
    the first n of each category in file order, or n drawn with ``random.Random(seed)`` when a
    seed is given (the drawn prompts keep their file order). ``None`` keeps all.
    """
    by_cat: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    if categories is not None:
        unknown = [c for c in categories if c not in by_cat]
        if unknown:
            raise SpecDecodeError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                f"this prompt set has: {', '.join(by_cat)}"
            )
        order = list(dict.fromkeys(categories))
    else:
        order = list(by_cat)
    if n_per_category is not None and n_per_category < 1:
        raise SpecDecodeError(f"--n-per-category must be at least 1, got {n_per_category}")
    chosen: list[Prompt] = []
    for cat in order:
        items = by_cat[cat]
        if n_per_category is not None and n_per_category < len(items):
            if seed is None:
                items = items[:n_per_category]
            else:
                # A per-category generator: adding a category does not change the others' picks.
                rng = random.Random(f"{seed}:{cat}")
                keep = sorted(rng.sample(range(len(items)), n_per_category))
                items = [items[i] for i in keep]
        chosen.extend(items)
    if not chosen:
        raise SpecDecodeError("the prompt set is empty")
    return chosen


def round_robin(prompts: list, category=lambda p: p.category) -> list:
    """The prompts reordered by turns over the categories (the first of each category in order
    of first appearance, then the second, ...); each category keeps its own order."""
    by_cat: dict[str, list] = {}
    for p in prompts:
        by_cat.setdefault(category(p), []).append(p)
    out: list = []
    for i in range(max((len(v) for v in by_cat.values()), default=0)):
        out.extend(v[i] for v in by_cat.values() if i < len(v))
    return out


def load_prompts(
    *,
    dataset: str | None = None,
    prompts_file: str | Path | None = None,
    categories: list[str] | None = None,
    n_per_category: int | None = None,
    seed: int | None = None,
    group_mt_bench: bool = True,
) -> list[Prompt]:
    """The prompt set for a bench run: ``dataset`` (``"spec-bench"``) or ``prompts_file``.

    For Spec-Bench, categories are the six Spec-Bench reports (mt_bench, translation,
    summarization, qa, math_reasoning, rag); asking for a raw MT-bench category (e.g.
    "coding") selects just those questions under that name.
    """
    if (dataset is None) == (prompts_file is None):
        raise SpecDecodeError("give exactly one of --dataset or --prompts")
    if prompts_file is not None:
        return select(
            read_jsonl(prompts_file), categories=categories, n_per_category=n_per_category, seed=seed
        )
    if dataset != SPEC_BENCH:
        raise SpecDecodeError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    path = spec_bench_path()
    if not path.is_file():
        raise SpecDecodeError(f"the embedded Spec-Bench file is missing ({path}); reinstall specdecode")
    raw = read_jsonl(path)
    if not group_mt_bench:
        return select(raw, categories=categories, n_per_category=n_per_category, seed=seed)
    wanted_raw = [c for c in (categories or []) if c in MT_BENCH_CATEGORIES]
    if not wanted_raw:
        return select(group_spec_bench(raw), categories=categories, n_per_category=n_per_category, seed=seed)
    if "mt_bench" in categories:
        raise SpecDecodeError(
            f"ask for either mt_bench or some of its parts ({', '.join(wanted_raw)}), not both"
        )
    # Raw MT-bench names keep their own label; the other categories are the same either way.
    return select(raw, categories=categories, n_per_category=n_per_category, seed=seed)
