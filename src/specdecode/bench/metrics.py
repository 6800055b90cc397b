"""Benchmark metrics: pure functions on per-prompt records, no torch.

Conventions (Spec-Bench's, see ``data/SPEC_BENCH_LICENSE.md``):

- tokens/s of a method is the mean over prompts of that prompt's ``new_tokens / seconds``;
- speedup is ``mean(method tokens/s) / mean(baseline tokens/s)``, over the prompts both ran;
- mean accepted is tokens committed per target forward, the bonus token included (plain
  decoding: 1.0), pooled over all decoding steps of all prompts. The prefill forward and the
  token it yields are not a step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields


@dataclass
class PromptRecord:
    """One method's run on one prompt."""

    prompt_id: str
    category: str
    method: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    token_ids: list[int] = field(default_factory=list)
    # Decoding steps (target forwards after the prefill) and tokens committed by each, bonus
    # included. None where the method does not expose them.
    steps: int | None = None
    accepted_lengths: list[int] | None = None
    peak_memory_mb: float | None = None
    finish_reason: str | None = None
    # Output identity with the reference method (ar), filled in after all methods ran the prompt.
    identical_to_ar: bool | None = None
    first_difference: int | None = None
    near_tie: bool | None = None
    tie_gap: float | None = None
    # Engine methods: seconds per step phase (draft, forward, verify, learn) over the run.
    phase_seconds: dict[str, float] | None = None
    # ``bench --turns``: the turn of the conversation (1, 2, ...; None when only first turns
    # ran), and whether this method's input differed from the reference's (an earlier turn's
    # answer differed), so the outputs were not compared on the same input.
    turn: int | None = None
    context_differs: bool | None = None
    # The method that decoded, where the method chooses one (``auto``); else None.
    method_ran: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accepted(self) -> float | None:
        if self.accepted_lengths:
            return sum(self.accepted_lengths) / len(self.accepted_lengths)
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_second"] = self.tokens_per_second
        d["mean_accepted"] = self.mean_accepted
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PromptRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def tokens_per_second(records: Iterable[PromptRecord]) -> float | None:
    """Mean over prompts of per-prompt tokens/s (Spec-Bench), None without records."""
    return _mean([r.tokens_per_second for r in records])


def speedup(records: Sequence[PromptRecord], baseline: Sequence[PromptRecord]) -> float | None:
    """mean(method tok/s) / mean(baseline tok/s) over the prompts (and turns) both ran; None if none."""
    base = {(r.prompt_id, r.turn): r for r in baseline}
    paired = [(r, base[r.prompt_id, r.turn]) for r in records if (r.prompt_id, r.turn) in base]
    if not paired:
        return None
    num = _mean([r.tokens_per_second for r, _ in paired])
    den = _mean([b.tokens_per_second for _, b in paired])
    if not den:
        return None
    return num / den


def mean_accepted(records: Iterable[PromptRecord]) -> float | None:
    """Tokens per target forward (bonus included), pooled over all steps; None if not exposed."""
    tokens = steps = 0
    for r in records:
        if r.accepted_lengths:
            tokens += sum(r.accepted_lengths)
            steps += len(r.accepted_lengths)
    return tokens / steps if steps else None


def acceptance_histogram(records: Iterable[PromptRecord]) -> dict[int, int]:
    """Accepted length -> number of steps, pooled over prompts, sorted by length."""
    counts: Counter[int] = Counter()
    for r in records:
        if r.accepted_lengths:
            counts.update(r.accepted_lengths)
    return dict(sorted(counts.items()))


def peak_memory_mb(records: Iterable[PromptRecord]) -> float | None:
    vals = [r.peak_memory_mb for r in records if r.peak_memory_mb is not None]
    return max(vals) if vals else None


@dataclass
class IdentitySummary:
    compared: int = 0
    identical: int = 0
    near_ties: int = 0

    @property
    def differs(self) -> int:
        return self.compared - self.identical

    @property
    def real_errors(self) -> int:
        return self.differs - self.near_ties


def identity_summary(records: Iterable[PromptRecord]) -> IdentitySummary:
    """Counts over the records that were compared with the reference (identical_to_ar not None)."""
    s = IdentitySummary()
    for r in records:
        if r.identical_to_ar is None:
            continue
        s.compared += 1
        if r.identical_to_ar:
            s.identical += 1
        elif r.near_tie:
            s.near_ties += 1
    return s


def strip_at_eos(ids: Sequence[int], eos_ids: Iterable[int]) -> tuple[list[int], bool]:
    """Tokens before the first end-of-sequence token, and whether one was there.

    Methods differ in whether they return the EOS token; identity compares what comes before it.
    """
    eos = set(eos_ids)
    for i, t in enumerate(ids):
        if t in eos:
            return list(ids[:i]), True
    return list(ids), False


def first_difference(ref: Sequence[int], out: Sequence[int], eos_ids: Iterable[int] = ()) -> int | None:
    """Index of the first token where ``out`` departs from ``ref`` (EOS-normalised); None if equal.

    If one is a strict prefix of the other, the difference is at the shorter one's length (where
    one stopped and the other went on).
    """
    a, a_eos = strip_at_eos(ref, eos_ids)
    b, b_eos = strip_at_eos(out, eos_ids)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    if len(a) == len(b):
        # Same tokens: equal, whether or not an EOS was returned.
        return None
    return min(len(a), len(b))


def summarize_method(records: Sequence[PromptRecord], baseline: Sequence[PromptRecord] | None) -> dict:
    """The summary fields for one method over some records (one category or all)."""
    ident = identity_summary(records)
    compared = ident.compared > 0
    return {
        "tokens_per_second": tokens_per_second(records),
        "speedup": speedup(records, baseline) if baseline else None,
        "mean_accepted": mean_accepted(records),
        "prompts": len(records),
        "identical_to_ar": ident.identical if compared else None,
        "differs_from_ar": ident.differs if compared else None,
        "near_ties": ident.near_ties if compared else None,
        "real_errors": ident.real_errors if compared else None,
        "peak_memory_mb": peak_memory_mb(records),
        "accept_histogram": {str(k): v for k, v in acceptance_histogram(records).items()},
        "new_tokens_mean": _mean([r.new_tokens for r in records]),
        "seconds_total": sum(r.seconds for r in records),
        "step_ms": step_ms(records),
        "ran": methods_ran(records),
    }


def methods_ran(records: Sequence[PromptRecord]) -> dict[str, int] | None:
    """For a method that chooses what decodes (``auto``): how many runs each choice made."""
    ran = Counter(r.method_ran for r in records if r.method_ran is not None)
    return dict(sorted(ran.items())) if ran else None


def step_ms(records: Sequence[PromptRecord]) -> dict[str, float] | None:
    """Milliseconds per decoding step in each phase (draft, forward, verify, learn): the mean
    over prompts of each prompt's phase time divided by its steps. None for methods that do
    not report phases (the transformers baselines)."""
    per: dict[str, list[float]] = {}
    for r in records:
        if not r.phase_seconds or not r.steps:
            continue
        for k, v in r.phase_seconds.items():
            per.setdefault(k, []).append(1000.0 * v / r.steps)
    return {k: _mean(v) for k, v in per.items()} if per else None


def summarize(
    records: Sequence[PromptRecord],
    methods: Sequence[str] | None = None,
    baseline: str | None = "hf-ar",
) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """``(summary, categories)``: method -> fields overall, and category -> method -> fields.

    ``methods`` fixes the order (default: order of first appearance); methods without records
    are left out. ``baseline`` names the method speedups are measured against.
    """
    if methods is None:
        methods = list(dict.fromkeys(r.method for r in records))
    by_method: dict[str, list[PromptRecord]] = {m: [] for m in methods}
    cats: list[str] = []
    for r in records:
        if r.method in by_method:
            by_method[r.method].append(r)
        if r.category not in cats:
            cats.append(r.category)
    base_all = by_method.get(baseline, []) if baseline else []
    summary = {m: summarize_method(rs, base_all) for m, rs in by_method.items() if rs}
    categories: dict[str, dict[str, dict]] = {}
    for c in cats:
        per: dict[str, dict] = {}
        base_c = [r for r in base_all if r.category == c]
        for m, rs in by_method.items():
            rc = [r for r in rs if r.category == c]
            if rc:
                per[m] = summarize_method(rc, base_c)
        categories[c] = per
    return summary, categories
