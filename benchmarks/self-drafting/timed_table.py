"""One table from several `specdecode bench` runs of the self-drafting methods (issue 12).

Each run carries its own `hf-ar` (and maybe `hf-pld`, `hybrid`), so every method's speed is
given as a ratio to the baselines measured *in its own run*; runs are never compared by their
absolute tokens/s. A method run with `stop_head=online` is labelled `method + stop head`.

    python benchmarks/self-drafting/timed_table.py run-a.json run-b.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    s, meta = d["summary"], d["meta"]
    options = meta.get("method_options", {})
    base = {b: s[b]["tokens_per_second"] for b in ("hf-ar", "hf-pld", "hybrid") if b in s}
    out = []
    for m, r in s.items():
        label = m + (" + stop head" if options.get(m, {}).get("stop_head") == "online" else "")
        tps = r["tokens_per_second"]
        ratios = [f"{tps / base[b]:.2f}x" if b in base else "-" for b in ("hf-ar", "hf-pld", "hybrid")]
        acc = r.get("mean_accepted")
        ms = r.get("step_ms") or {}
        split = " + ".join(f"{ms[k]:.0f}" for k in ("draft", "forward", "verify", "learn") if k in ms)
        ident = r.get("identical_to_ar")
        ident = "-" if ident is None else f"{ident}/{r['prompts']}"
        same = [
            p["results"][m].get("token_ids") == p["results"]["hf-ar"].get("token_ids") for p in d["prompts"]
        ]
        out.append(
            f"| {path.stem} | {label} | {tps:.1f} | {' | '.join(ratios)} | "
            f"{acc:.2f} | {split or '-'} | {ident} | {sum(same)}/{len(same)} |"
        )
    return out


def main(paths: list[str]) -> None:
    print(
        "| run | method | tok/s | x hf-ar | x hf-pld | x hybrid | accepted/forward | ms/step: draft + forward + verify + learn | identical to ar | same tokens as hf-ar |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        print("\n".join(rows(Path(p))))


if __name__ == "__main__":
    main(sys.argv[1:])
