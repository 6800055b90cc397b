"""The audit table for the default model from the JSON files of `specdecode audit --json`.

python benchmarks/audit/table.py benchmarks/audit/default-model/*.json > benchmarks/audit/default-model.md
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    runs = [json.load(open(p, encoding="utf-8")) for p in paths]
    print("# `specdecode audit` on the default model, every registered method\n")
    first = runs[0]
    s = first["settings"]
    print(
        f"Model {first['model']} ({first['dtype']}, {first['device']}); greedy check: 3 Spec-Bench prompts "
        f"(one per category in turn) x {s['max_new_tokens']} tokens against ar; sampling check: the samples "
        f"of the row (new tokens 1 to the row's count) at temperature {s['temperature']}, {s['coupling']} "
        f"coupling, alpha {s['alpha']}. Draft for the draft methods: the default model itself. 'drafted' and "
        "'accepted': the sampling check's draft tokens per step and accepted ones (as the audit prints them).\n"
    )
    print(
        "| method | greedy identical | near-ties | different | samples x tokens | drafted | accepted "
        "| p first 3 | p all | verdict | seconds |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|")
    rows = sorted((m for r in runs for m in r["methods"]), key=lambda m: m["method"])
    for m in rows:
        sp = m["sampling"] or {}
        print(
            f"| {m['method']} | {m['identical']}/{len(m['greedy'])} | {m['near_ties']} | {m['different']} "
            f"| {sp.get('samples', 0)} x {sp.get('tokens', 0)} "
            f"| {sp.get('drafted', 0):.2f} | {sp.get('accepted', 0):.2f} | {sp.get('joint_pvalue', float('nan')):.3g} "
            f"| {sp.get('pit_pvalue', float('nan')):.3g} | {m['verdict']} | {m['seconds']:.0f} |"
        )
    print("\nCommands (one JSON each, in default-model/):\n")
    for r in runs:
        print(f"- `{r['command']}`")


if __name__ == "__main__":
    main(sys.argv[1:])
