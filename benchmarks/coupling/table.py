"""The coupling comparison's tables, from the bench result files in this folder.

    python benchmarks/coupling/table.py

For each seed, mean accepted tokens per target forward (bonus included, pooled over the six
prompts' steps) under each coupling, and per prompt; whether each method's text equals ar's.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
RUNS = [  # (label, file, the file whose ar output it is compared with)
    ("residual, seed 0", "residual.json", "residual.json"),
    ("gumbel, seed 0", "gumbel.json", "gumbel.json"),
    # the earlier measurement: coupled_drafts.py's monkeypatch, before draft-model drew so itself
    ("gumbel, seed 0, coupled drafts (patch)", "gumbel-coupled-drafts.json", "gumbel.json"),
    ("residual, seed 1000", "residual-seed1000.json", "residual-seed1000.json"),
    ("gumbel, seed 1000", "gumbel-seed1000.json", "gumbel-seed1000.json"),
    # draft-model drawing its drafts with the verifier's noise, as the library does now
    ("gumbel, seed 0, draft-model coupled", "gumbel-drafter.json", "gumbel-drafter.json"),
    (
        "gumbel, seed 1000, draft-model coupled",
        "gumbel-drafter-seed1000.json",
        "gumbel-drafter-seed1000.json",
    ),
]


def load(name: str) -> dict | None:
    path = HERE / name
    return json.loads(path.read_text()) if path.exists() else None


def pooled(result: dict) -> dict[str, float]:
    return {m: s["mean_accepted"] for m, s in result["summary"].items()}


def main() -> None:
    runs = [(label, r, load(ref)) for label, name, ref in RUNS if (r := load(name)) is not None]
    methods = ["pld", "hybrid", "draft-model", "dyspec"]
    print("| run | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for label, r, _ in runs:
        acc = pooled(r)
        print(f"| {label} | " + " | ".join(f"{acc[m]:.2f}" if m in acc else "" for m in methods) + " |")
    print()
    print("Per prompt (mean accepted; `=ar` where the text is ar's):")
    print()
    print("| run | prompt | " + " | ".join(methods) + " |")
    print("|---|---|" + "---:|" * len(methods))
    for label, r, ref in runs:
        ars = {p["id"]: p["results"]["ar"]["token_ids"] for p in ref["prompts"]}
        for p in r["prompts"]:
            res = p["results"]
            ar = ars.get(p["id"])
            cells = []
            for m in methods:
                if m not in res:
                    cells.append("")
                    continue
                same = " =ar" if ar is not None and res[m]["token_ids"] == ar else ""
                cells.append(f"{res[m]['mean_accepted']:.2f}{same}")
            print(f"| {label} | {p['id']} {p['category']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
