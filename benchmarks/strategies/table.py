"""Markdown tables for benchmarks/strategies/ from its JSON files:

- ``smollm2-135m.json`` (``specdecode bench``): each method's tokens/s, its speed against
  ``ar`` measured in the same run, and its agreement with ``ar``'s greedy output (identical
  outputs, and the common prefix over ``ar``'s length, averaged over prompts);
- ``superposed-cost.json`` and ``entropy-adaptive.json`` (``extras.py``).

    python benchmarks/strategies/table.py > benchmarks/strategies/tables.md
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def bench_table(path: Path) -> str:
    r = json.loads(path.read_text())
    methods = r["meta"]["methods"]
    rows = [
        "| method | tokens/s | speed vs ar | identical to ar | common prefix with ar (mean share of ar's tokens) |",
        "|---|---|---|---|---|",
    ]
    ar_tps = r["summary"]["ar"]["tokens_per_second"]
    for m in methods:
        s = r["summary"][m]
        shares = []
        for p in r["prompts"]:
            ref = p["results"]["ar"]["token_ids"]
            out = p["results"][m]["token_ids"]
            shares.append(common_prefix(out, ref) / max(1, len(ref)))
        rows.append(
            f"| {m} | {s['tokens_per_second']:.1f} | {s['tokens_per_second'] / ar_tps:.2f}x | "
            f"{s['identical_to_ar']}/{s['prompts']} | {statistics.mean(shares):.2f} |"
        )
    meta = r["meta"]
    head = (
        f"`{meta['command']}`\n\n{meta['n_prompts']} Spec-Bench prompts ({', '.join(meta['categories'])}), "
        f"{meta['max_new_tokens']} new tokens, greedy, {meta['model']} on {meta['device']} ({meta['dtype']}).\n"
    )
    return head + "\n" + "\n".join(rows) + "\n"


def superposed_table(path: Path) -> str:
    r = json.loads(path.read_text())
    s = r["summary"]
    k = next(key for key in r["rows"][0] if key.startswith("superposed"))
    samples = next(key for key in r["rows"][0] if key.endswith("samples"))
    rows = ["| run | median seconds per prompt | tokens (all outputs) | forwards |", "|---|---|---|---|"]
    for name in ("ar", samples, k):
        secs = statistics.median(row[name]["seconds"] for row in r["rows"])
        toks = sum(row[name].get("draft_tokens", row[name]["tokens"]) for row in r["rows"])
        fwd = sum(row[name]["forwards"] for row in r["rows"]) if "forwards" in r["rows"][0][name] else "-"
        rows.append(f"| {name} | {secs:.2f} | {toks} | {fwd} |")
    load = r["meta"]["load_average_before"][0], r["meta"]["load_average_after"][0]
    return (
        f"`{r['meta']['command']}` (load average {load[0]:.1f} before, {load[1]:.1f} after)\n\n"
        + "\n".join(rows)
        + f"\n\n{samples} take {s['median_time_ratio_samples_over_superposed']:.2f}x the time of one superposed "
        f"run (median over {s['prompts']} prompts); per draft token, samples cost "
        f"{s['median_seconds_per_draft_token_samples_over_superposed']:.2f}x superposed. The best superposed draft "
        f"is identical to ar's greedy output on {s['superposed_identical_to_ar']}/{s['prompts']} prompts; common "
        f"prefix {s['superposed_mean_agreement']:.2f} of ar's tokens on average.\n"
    )


def entropy_table(path: Path) -> str:
    r = json.loads(path.read_text())
    rows = [
        "| run | tokens/s | speed vs large alone | large model's share of tokens | text identical to large's "
        "| common prefix with large's text (mean share of its characters) |",
        "|---|---|---|---|---|---|",
    ]
    n = r["prompts"]
    for name, s in r["summary"].items():
        share = f"{s['large_share']:.2f}" if "large_share" in s else ("1.00" if "large" in name else "0.00")
        same = sum(row[name]["text"] == row["ar (large)"]["text"] for row in r["rows"])
        agree = statistics.mean(
            common_prefix_text(row[name]["text"], row["ar (large)"]["text"]) for row in r["rows"]
        )
        rows.append(
            f"| {name} | {s['tokens_per_second']:.2f} | {s['speed_vs_large_alone']:.2f}x | {share} | "
            f"{same}/{n} | {agree:.2f} |"
        )
    load = r["meta"]["load_average_before"][0], r["meta"]["load_average_after"][0]
    return (
        f"`{r['meta']['command']}` (load average {load[0]:.1f} before, {load[1]:.1f} after)\n\n{r['what']}\n\n"
        + "\n".join(rows)
        + "\n"
    )


def common_prefix_text(a: str, b: str) -> float:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n / max(1, len(b))


def main() -> None:
    parts = []
    for name, fn, title in (
        ("smollm2-135m.json", bench_table, "specdecode bench: strategies beside ar"),
        ("superposed-cost.json", superposed_table, "superposed decoding against k separate samples"),
        ("entropy-adaptive.json", entropy_table, "entropy-adaptive decoding against the large model alone"),
    ):
        path = HERE / name
        if path.exists():
            parts.append(f"## {title}\n\n{fn(path)}")
    print("\n".join(parts))


if __name__ == "__main__":
    main()
