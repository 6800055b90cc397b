"""The llama.cpp backend's benchmark table: every method's tokens/s (mean over prompts, as
`specdecode bench` reports it) as a ratio to llama.cpp's own decoding measured in the same run
(`llama-ar`, `llama-pld`) and to transformers (`hf-ar`), with identity to `ar` and the margin
of every near-tie.

    python benchmarks/llamacpp/table.py benchmarks/llamacpp/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    d = json.loads(path.read_text())
    s, meta = d["summary"], d["meta"]
    rows = [
        f"### {path.stem}: {meta['model']}, {meta['n_prompts']} prompts x {meta['max_new_tokens']} tokens",
        "",
        "| method | tok/s | x llama-ar | x llama-pld | x hf-ar | accepted/forward | identical to ar | near-ties (logit gap) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def base(name):
        return s[name]["tokens_per_second"] if name in s else None

    ref = {b: base(b) for b in ("llama-ar", "llama-pld", "hf-ar")}
    gaps: dict[str, list[float]] = {}
    for p in d["prompts"]:
        for m, r in p["results"].items():
            if r.get("identical_to_ar") is False:
                gaps.setdefault(m, []).append(r.get("tie_gap"))
    for m, r in s.items():
        tps = r["tokens_per_second"]
        ratios = [f"{tps / v:.2f}x" if v else "-" for v in ref.values()]
        ident = r.get("identical_to_ar")
        ident = "-" if ident is None else f"{ident}/{r['prompts']}"
        ties = ", ".join("?" if g is None else f"{g:.2g}" for g in gaps.get(m, [])) or "-"
        acc = r.get("mean_accepted")
        rows.append(
            f"| {m} | {tps:.1f} | {' | '.join(ratios)} | {acc:.2f} | {ident} | {ties} |"
            if acc
            else f"| {m} | {tps:.1f} | {' | '.join(ratios)} | - | {ident} | {ties} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print("\n\n".join(table(Path(p)) for p in sys.argv[1:]))
