"""Bench reports: the Markdown table beside the JSON, and ``bench --compare OLD NEW``."""

from __future__ import annotations

import json
from pathlib import Path

from specdecode.errors import SpecDecodeError


def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    if x is None:
        return none
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _lossy(method: str) -> bool:
    """A strategy (specdecode.strategies): its output differs from ar's by design."""
    from specdecode.strategies import is_strategy

    return is_strategy(method)


def _identity_cell(s: dict, method: str = "") -> str:
    ident = s.get("identical_to_ar")
    if ident is None:
        return "-"
    cell = f"{ident}/{s.get('prompts', '?')}"
    differs = s.get("differs_from_ar") or 0
    if differs and _lossy(method):
        cell += " (lossy by design)"
    elif differs:
        ties = s.get("near_ties") or 0
        errors = s.get("real_errors", differs - ties)
        cell += f" ({ties} near-tie, {errors} real)"
    return cell


def markdown_report(result: dict) -> str:
    """A Markdown page for a bench result dict (as written to the JSON file)."""
    meta = result.get("meta", {})
    summary = result.get("summary", {})
    base = meta.get("baseline") or "baseline"
    out: list[str] = ["# specdecode bench", ""]
    out += _status(result)
    out += _meta_list(meta)
    out += _overall_table(summary, base, meta.get("reference") or "ar")
    out += _turn_tables(result.get("turns") or {}, base, meta.get("reference") or "ar")
    out += _differences_table(result, meta)
    out += _step_table(summary)
    out += _category_table(result.get("categories", {}), list(summary), base)
    out += _histogram_table(summary)
    out += _latency_table(result.get("latency_curve"))
    out += _FOOTNOTE
    return "\n".join(out)


_FOOTNOTE = [
    "tokens/s: mean over prompts of per-prompt tokens/s. Speedup: mean method tokens/s over mean",
    "baseline tokens/s, same prompts (Spec-Bench). Mean accepted: tokens per target forward,",
    "bonus included, prefill excluded. Near-tie: the first differing token is within the",
    "tolerance of the target's top logit at that position (floating-point order), not an error.",
    "",
]


def _status(result: dict) -> list[str]:
    if result.get("interrupted"):
        return ["**Interrupted:** partial results (the prompts finished before the stop).", ""]
    if result.get("complete") is False:
        return ["**Incomplete:** the run has not finished (or crashed); partial results.", ""]
    return []


def _meta_list(meta: dict) -> list[str]:
    rows = [
        ("model", meta.get("model")),
        ("draft", meta.get("draft")),
        ("device", meta.get("device")),
        ("dtype", meta.get("dtype")),
        ("machine", _machine_line(meta.get("machine", {}))),
        ("torch / transformers", f"{meta.get('torch')} / {meta.get('transformers')}"),
        ("prompts", _prompts_line(meta)),
        ("max new tokens", meta.get("max_new_tokens")),
        ("turns", meta.get("turns") if meta.get("turns") not in (None, 1) else None),
        ("temperature", meta.get("temperature")),
        ("warm-up prompts", meta.get("warmup")),
        ("speedup baseline", meta.get("baseline")),
        ("identity reference", meta.get("reference")),
        ("memory", meta.get("memory_kind")),
        ("date", meta.get("date")),
        ("command", f"`{meta['command']}`" if meta.get("command") else None),
    ]
    return [f"- {k}: {v}" for k, v in rows if v is not None] + [""]


def _overall_table(summary: dict, base: str, ref: str) -> list[str]:
    out = [
        "## Overall",
        "",
        f"| method | tokens/s | speedup vs {base} | mean accepted | identical to {ref} | peak memory MB | prompts |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for m, s in summary.items():
        ran = s.get("ran")
        name = f"{m} ({', '.join(f'{k} {v}' for k, v in ran.items())})" if ran else m
        out.append(
            f"| {name} | {_fmt(s.get('tokens_per_second'), '.1f')} | {_fmt(s.get('speedup'), '.2f')}"
            f"{'x' if s.get('speedup') is not None else ''} | {_fmt(s.get('mean_accepted'), '.2f')} "
            f"| {_identity_cell(s, m)} | {_fmt(s.get('peak_memory_mb'), '.0f')} | {s.get('prompts', '-')} |"
        )
    return [*out, ""]


def _turn_tables(turns: dict, base: str, ref: str) -> list[str]:
    """``bench --turns``: the overall table for each turn of the conversations."""
    out: list[str] = []
    for k, summary in turns.items():
        table = _overall_table(summary, base, ref)
        table[0] = f"## Turn {k}"
        if k != "1":
            table[1:1] = ["", "Each method's input: the conversation with its own earlier answers."]
        out += table
    return out


def _differences_table(result: dict, meta: dict) -> list[str]:
    """Every output that differs from the reference's: where, and how close to a tie the
    target was there (the margin: the top logit minus the lower of the two tokens' logits)."""
    rows = []
    for p in result.get("prompts", []):
        turns = p.get("turns") or {"": p.get("results", {})}
        for k, runs in turns.items():
            for m, r in runs.items():
                if r.get("identical_to_ar") is False:
                    rows.append((m, p.get("id"), k, r))
    if not rows:
        return []
    tol = meta.get("tie_tolerance")
    ref = meta.get("reference") or "ar"
    has_turns = any(k for _, _, k, _ in rows)
    out = [
        f"## Outputs that differ from {ref}",
        "",
        f"Margin: the target's top logit minus the lower of the two outputs' tokens at the first "
        f"difference, over the prompt and the common prefix; a near-tie when at most the tolerance"
        f"{f' ({tol:g})' if tol is not None else ''}.",
        "",
        f"| method | prompt |{' turn |' if has_turns else ''} first differing token | margin | verdict |",
        f"|---|---|{'---:|' if has_turns else ''}---:|---:|---|",
    ]
    for m, pid, k, r in rows:
        if r.get("context_differs"):
            margin, verdict = "-", "input differs (an earlier turn's answer differed"
            verdict += ", a near-tie)" if r.get("near_tie") else ")"
        else:
            margin = _fmt(r.get("tie_gap"), ".3g")
            verdict = "near-tie" if r.get("near_tie") else ("lossy by design" if _lossy(m) else "REAL ERROR")
        turn = f" {k} |" if has_turns else ""
        out.append(f"| {m} | {pid} |{turn} {_fmt(r.get('first_difference'))} | {margin} | {verdict} |")
    return [*out, ""]


def _step_table(summary: dict) -> list[str]:
    phased = {m: s["step_ms"] for m, s in summary.items() if s.get("step_ms")}
    if not phased:
        return []
    out = [
        "## Where a step's time goes",
        "",
        "Milliseconds per decoding step (mean over prompts), the project's methods only:",
        "drafting, the target's forward, verification and commit, the drafter's learning.",
        "",
        "| method | draft | forward | verify | learn | total | tokens per step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, ph in phased.items():
        parts = [ph.get(k) for k in ("draft", "forward", "verify", "learn")]
        total = sum(x for x in parts if x is not None)
        cells = " | ".join(_fmt(x, ".1f") for x in parts)
        out.append(f"| {m} | {cells} | {total:.1f} | {_fmt(summary[m].get('mean_accepted'), '.2f')} |")
    return [*out, ""]


def _category_table(categories: dict, methods: list[str], base: str) -> list[str]:
    if not categories or not methods:
        return []
    out = [
        f"## Speedup vs {base} by category (tokens/s in brackets)",
        "",
        "| category | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for c, per in categories.items():
        cells = []
        for m in methods:
            s = per.get(m)
            if not s:
                cells.append("-")
                continue
            sp = s.get("speedup")
            tps = _fmt(s.get("tokens_per_second"), ".1f")
            cells.append(f"{sp:.2f}x ({tps})" if sp is not None else f"- ({tps})")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _histogram_table(summary: dict) -> list[str]:
    hists = {m: s.get("accept_histogram") for m, s in summary.items() if s.get("accept_histogram")}
    if not hists:
        return []
    lengths = sorted({int(k) for h in hists.values() for k in h})
    out = [
        "## Accepted tokens per step (share of steps)",
        "",
        "| method | " + " | ".join(str(n) for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for m, h in hists.items():
        total = sum(h.values()) or 1
        cells = [f"{100 * h.get(str(n), 0) / total:.0f}%" for n in lengths]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _latency_table(curve: dict | None) -> list[str]:
    ns, secs = (curve.get("ns", []), curve.get("seconds", [])) if curve else ([], [])
    if not ns or not secs:
        return []
    t1 = secs[0]
    contexts = curve.get("contexts") or [curve.get("context_len")]
    rows = curve.get("grid") or [secs]
    threads = f", {curve['threads']} threads" if curve.get("threads") else ""
    out = [
        f"## Target forward latency t(n) ({curve.get('device')}, {curve.get('dtype')}{threads})",
        "",
        "| tokens scored n | " + " | ".join(f"ms after {c} tokens" for c in contexts) + " | t(n) / t(1) |",
        "|---:|" + "---:|" * len(rows) + "---:|",
    ]
    for i, n in enumerate(ns):
        cells = " | ".join(f"{1000 * row[i]:.2f}" for row in rows if i < len(row))
        out.append(f"| {n} | {cells} | {secs[i] / t1:.2f} |")
    return [*out, ""]


def _machine_line(machine: dict) -> str | None:
    if not machine:
        return None
    parts = [machine.get("cpu"), f"{machine.get('cores')} cores" if machine.get("cores") else None]
    if machine.get("gpu"):
        parts.append(machine["gpu"])
    return ", ".join(p for p in parts if p)


def _prompts_line(meta: dict) -> str | None:
    src = meta.get("dataset") or meta.get("prompts_file")
    n = meta.get("n_prompts")
    if src is None and n is None:
        return None
    return f"{n} from {src}" if src else str(n)


# --------------------------------------------------------------------------- compare


def load_result(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecDecodeError(f"bench result not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecDecodeError(f"{path} is not a readable bench result JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise SpecDecodeError(f"{path} is not a bench result (no 'summary')")
    _check_fields(data, path)
    return data


_NUMBERS = ("speedup", "tokens_per_second", "mean_accepted")


def _check_fields(data: dict, path: Path) -> None:
    """A SpecDecodeError naming the file and the field for a value ``--compare`` cannot use
    (an edited or foreign file: a number written as a string, a list where an object goes)."""

    def bad(field: str, want: str, value) -> SpecDecodeError:
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return SpecDecodeError(
            f"{path}: {field} must be {want}, got {type(value).__name__} {shown}; "
            "is this file a specdecode bench result?"
        )

    def check_numbers(entry, field: str) -> None:
        if not isinstance(entry, dict):
            raise bad(field, "an object", entry)
        for k in _NUMBERS:
            v = entry.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise bad(f"{field}.{k}", "a number or null", v)

    for m, entry in data["summary"].items():
        check_numbers(entry, f"summary.{m}")
    cats = data.get("categories", {})
    if not isinstance(cats, dict):
        raise bad("categories", "an object", cats)
    for c, per in cats.items():
        if not isinstance(per, dict):
            raise bad(f"categories.{c}", "an object", per)
        for m, entry in per.items():
            check_numbers(entry, f"categories.{c}.{m}")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise bad("meta", "an object", meta)
    machine = meta.get("machine") or {}
    if not isinstance(machine, dict):
        raise bad("meta.machine", "an object", machine)
    for k in ("cpu", "gpu"):
        v = machine.get(k)
        if v is not None and not isinstance(v, str):
            raise bad(f"meta.machine.{k}", "a string or null", v)


def _delta(old, new, *, pct: bool) -> str:
    if old is None and new is None:
        return "-"
    if old is None:
        return f"(new) {new:.2f}"
    if new is None:
        return f"{old:.2f} (gone)"
    d = new - old
    if pct and old:
        return f"{old:.2f} -> {new:.2f} ({100 * d / old:+.1f}%)"
    return f"{old:.2f} -> {new:.2f} ({d:+.2f})"


def compare_results(old: dict, new: dict) -> list[dict]:
    """Per method (union, old order then new), the old/new speedup, tokens/s, mean accepted."""
    so, sn = old.get("summary", {}), new.get("summary", {})
    rows = []
    for m in list(dict.fromkeys([*so, *sn])):
        a, b = so.get(m, {}), sn.get(m, {})
        row = {"method": m}
        for k in ("speedup", "tokens_per_second", "mean_accepted", "identical_to_ar"):
            row[k] = (a.get(k), b.get(k))
        rows.append(row)
    return rows


def compare_text(old: dict, new: dict, old_name: str = "OLD", new_name: str = "NEW") -> str:
    """What changed between two bench results, as text for the terminal."""
    lines = [f"compare {old_name} -> {new_name}"]
    mo, mn = old.get("meta", {}), new.get("meta", {})
    for k in ("model", "device", "dtype", "max_new_tokens", "n_prompts", "temperature"):
        if mo.get(k) != mn.get(k):
            lines.append(f"  note: {k} differs: {mo.get(k)} -> {mn.get(k)}")
    if mo.get("machine") != mn.get("machine"):
        lines.append(
            f"  note: machine differs: {_machine_line(mo.get('machine') or {})} -> "
            f"{_machine_line(mn.get('machine') or {})}"
        )
    for name, d in ((old_name, old), (new_name, new)):
        if d.get("interrupted") or d.get("complete") is False:
            lines.append(f"  note: {name} is a partial run")
    rows = compare_results(old, new)
    w = max([len(r["method"]) for r in rows] + [6])
    lines.append("")
    lines.append(f"  {'method':<{w}}  {'speedup':<30}  {'tokens/s':<32}  {'mean accepted':<30}")
    for r in rows:
        lines.append(
            f"  {r['method']:<{w}}  {_delta(*r['speedup'], pct=False):<30}  "
            f"{_delta(*r['tokens_per_second'], pct=True):<32}  {_delta(*r['mean_accepted'], pct=False):<30}"
        )
    ident = [
        f"  {r['method']}: identical to ar {r['identical_to_ar'][0]} -> {r['identical_to_ar'][1]}"
        for r in rows
        if r["identical_to_ar"][0] != r["identical_to_ar"][1]
    ]
    if ident:
        lines.append("")
        lines += ident
    cats_o, cats_n = old.get("categories", {}), new.get("categories", {})
    shared = [c for c in cats_n if c in cats_o]
    if len(shared) > 1:
        lines.append("")
        lines.append("  speedup by category (old -> new):")
        for c in shared:
            parts = []
            for m in cats_n[c]:
                a = cats_o[c].get(m, {}).get("speedup")
                b = cats_n[c][m].get("speedup")
                if a is not None and b is not None:
                    parts.append(f"{m} {a:.2f}->{b:.2f}")
            if parts:
                lines.append(f"    {c}: " + ", ".join(parts))
    return "\n".join(line.rstrip() for line in lines)
