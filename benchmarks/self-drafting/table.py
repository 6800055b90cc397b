"""Markdown table of identity.json (greedy identity with ar, mean accepted, drafted nodes and the
step split per method): ``python benchmarks/self-drafting/table.py identity.json``."""

import json
import sys


def main(path: str) -> None:
    record = json.load(open(path))
    print(
        "| method | options | identical to ar | mean accepted | drafted per step | ms/step: draft | forward | verify | learn |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, m in record["methods"].items():
        opts = ", ".join(f"{k}={v}" for k, v in m.get("options", {}).items()) or "defaults"
        ms = m.get("step_ms", {})
        split = " | ".join(str(ms.get(k, "")) for k in ("draft", "forward", "verify", "learn"))
        drafted = m.get("drafted_per_step", "")
        print(
            f"| {label} | {opts} | {m['identical']}/{m['of']} | {m['mean_accepted']} | {drafted} | {split} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
