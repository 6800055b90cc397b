"""Monitor-guided decoding benchmark: does the model write names that exist, and what does the
monitor cost per token?

repo/ is a small made-up package (shopkit) whose classes have names a model cannot guess
(``Ledger.post_entry_v2``, ``InventoryStore.restock_from_supplier``...). points.py holds
code prefixes of scripts using it, each ending at an attribute-access dot. For each point the
default model (SmolLM2-135M-Instruct, raw completion, no chat template) continues the code
greedily for ``--max-new-tokens`` tokens:

- ``free ar``: unconstrained plain decoding;
- ``monitor ar``: plain decoding with the monitor (``--monitor python --repo repo``);
- ``free hybrid`` and ``monitor hybrid``: the same with speculation (pld + aded + recycling),
  whose output must equal the ``ar`` one token for token.

The name written after the dot is checked against jedi's list at that point (does it exist?)
and against the name the code means (the one a reader would write). Times: each method runs
``--reps`` times per point (order rotated per repetition, after an untimed warm-up of the
point), a fresh monitor per generation (its per-trigger cache is per request, so every
repetition pays its jedi calls); ms/token is the median over repetitions, per point.

    taskset -c 1 python benchmarks/monitor/run.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from points import POINTS  # noqa: E402

from specdecode.constraints.monitor import Monitor, monitor_constraint  # noqa: E402
from specdecode.engine import build_decoder  # noqa: E402
from specdecode.models.loader import load_model  # noqa: E402

REPO = HERE / "repo"
METHODS = {  # name: (method, monitored, jump-forward)
    "free ar": ("ar", False, False),
    "monitor ar, no jump-forward": ("ar", True, False),
    "monitor ar": ("ar", True, True),
    "free hybrid": ("hybrid", False, False),
    "monitor hybrid": ("hybrid", True, True),
}
PURE = "monitor ar, no jump-forward"  # as many forwards as free ar: the monitor's own cost
# the name each point means (what its comment or use asks for)
INTENDED = {
    "ledger-post": "post_entry_v2",
    "ledger-void": "void_entry_by_ref",
    "ledger-month": "reconcile_month_end",
    "ledger-balance": "net_position_cents",
    "inventory-restock": "restock_from_supplier",
    "inventory-reserve": "reserve_units_for_order",
    "inventory-release": "release_reservation",
    "inventory-count": "sellable_units",
    "shipping-route": "plan_route_via_hubs",
    "shipping-eta": "estimate_eta_hours",
    "shipping-customs": "attach_customs_form",
    "accounts-loyalty": "apply_loyalty_credit",
    "accounts-freeze": "freeze_for_review",
    "accounts-spend": "lifetime_spend_cents",
}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def first_name(text: str) -> str:
    m = NAME.match(text)
    return m.group() if m else ""


def run_one(decoders, loaded, name, code, ids, max_new_tokens):
    method, monitored, jump = METHODS[name]
    constraint = (
        monitor_constraint(loaded, "python", REPO, code=code, jump_forward=jump) if monitored else None
    )
    start = time.perf_counter()
    r = decoders[method].generate_ids(ids, max_new_tokens=max_new_tokens, constraint=constraint)
    seconds = time.perf_counter() - start
    out = {
        "text": r.text,
        "token_ids": r.token_ids,
        "tokens": r.new_tokens,
        "ms_per_token": 1000 * seconds / max(1, r.new_tokens),
        "steps": r.steps,
    }
    if constraint is not None:
        out["jedi_calls"] = constraint.monitor.calls
        out["jedi_ms"] = 1000 * constraint.monitor.seconds
    return out


def markdown(result: dict) -> str:
    """The per-point table and the summary, as in README.md."""
    s = result["summary"]
    n = s["points"]
    lines = [
        "| point | intended name | unconstrained writes | exists | monitored writes | exists "
        "| ms/token free | ms/token monitor | ratio | jedi calls | jedi ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["points"]:
        f, m = r["methods"]["free ar"], r["methods"][PURE]
        lines.append(
            f"| {r['point']} | `{r['intended']}` | `{f['name'] or '-'}` | {'yes' if f['exists'] else 'no'} "
            f"| `{m['name'] or '-'}` | {'yes' if m['exists'] else 'no'} | {f['ms_per_token']:.0f} "
            f"| {m['ms_per_token']:.0f} | {r['monitor_overhead']['ar, no jump-forward']:.2f} "
            f"| {m['jedi_calls']} | {m['jedi_ms']:.0f} |"
        )
    t, fw = s["ms_per_token_median"], s["forwards_per_16_tokens_median"]
    o = s["overhead_median"]
    lines += [
        "",
        "| | " + " | ".join(METHODS) + " |",
        "|---" * (len(METHODS) + 1) + "|",
        "| name exists (jedi lists it) | " + " | ".join(f"{s['exists'][k]}/{n}" for k in METHODS) + " |",
        "| the intended name | " + " | ".join(f"{s['intended'][k]}/{n}" for k in METHODS) + " |",
        "| ms/token (median over points) | " + " | ".join(f"{t[k]:.0f}" for k in METHODS) + " |",
        "| forwards (median over points) | " + " | ".join(f"{fw[k]:g}" for k in METHODS) + " |",
        "| ms/token over free, same method (median of per-point ratios) | 1 | "
        f"{o['ar, no jump-forward']:.2f} | {o['ar']:.2f} | 1 | {o['hybrid']:.2f} |",
        "",
        f"jedi calls per generation (median) {s['jedi_calls_median']:g}, jedi time per token (median) "
        f"{s['jedi_ms_per_token_median']:.0f} ms. Monitored hybrid's output equals monitored ar's, and "
        f"jump-forward's equals no jump-forward's, at every point: {'yes' if s['hybrid_equals_ar'] else 'NO'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--only", nargs="*", default=None, help="run these points only (a quick check)")
    ap.add_argument("--table-only", action="store_true", help="write results.md from --out and stop")
    args = ap.parse_args()
    table = Path(args.out).with_suffix(".md")
    if args.table_only:
        table.write_text(markdown(json.loads(Path(args.out).read_text())))
        return
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    loaded = load_model("default", device="cpu")
    decoders = {m: build_decoder(m, loaded) for m in ("ar", "hybrid")}
    oracle = Monitor(REPO.resolve())
    names = list(METHODS)
    points = []
    chosen = {k: v for k, v in POINTS.items() if args.only is None or k in args.only}
    for p, (key, code) in enumerate(chosen.items()):
        ids = loaded.tokenizer.encode(code)
        listed = oracle.names(code.encode())
        for name in names:  # untimed warm-up (jedi's caches of the repository's modules)
            run_one(decoders, loaded, name, code, ids, args.max_new_tokens)
        runs = {name: [] for name in names}
        for rep in range(args.reps):
            shift = (p + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(run_one(decoders, loaded, name, code, ids, args.max_new_tokens))
        record = {"point": key, "intended": INTENDED[key], "jedi_names": len(listed.sorted), "methods": {}}
        for name in names:
            first = runs[name][0]
            assert all(r["token_ids"] == first["token_ids"] for r in runs[name]), (key, name)
            written = first_name(first["text"])
            entry = {
                "text": first["text"],
                "name": written,
                "exists": written.encode() in listed.whole,
                "intended": written == INTENDED[key],
                "ms_per_token": statistics.median(r["ms_per_token"] for r in runs[name]),
                "ms_per_token_runs": [round(r["ms_per_token"], 2) for r in runs[name]],
                "tokens": first["tokens"],
                "steps": first["steps"],
            }
            if "jedi_calls" in first:
                entry["jedi_calls"] = first["jedi_calls"]
                entry["jedi_ms"] = statistics.median(r["jedi_ms"] for r in runs[name])
            record["methods"][name] = entry
        m = record["methods"]
        record["hybrid_equals_ar"] = {
            "free": runs["free hybrid"][0]["token_ids"] == runs["free ar"][0]["token_ids"],
            "monitor": runs["monitor hybrid"][0]["token_ids"] == runs["monitor ar"][0]["token_ids"],
            "jump_forward": runs[PURE][0]["token_ids"] == runs["monitor ar"][0]["token_ids"],
        }
        record["monitor_overhead"] = {  # monitored ms/token over unconstrained, same point, same run
            "ar, no jump-forward": m[PURE]["ms_per_token"] / m["free ar"]["ms_per_token"],
            "ar": m["monitor ar"]["ms_per_token"] / m["free ar"]["ms_per_token"],
            "hybrid": m["monitor hybrid"]["ms_per_token"] / m["free hybrid"]["ms_per_token"],
        }
        points.append(record)
        print(
            f"{key:18s} free {m['free ar']['name'] or '-':24s} {'ok' if m['free ar']['exists'] else 'NO':2s}  "
            f"monitor {m['monitor ar']['name'] or '-':24s} {'ok' if m['monitor ar']['exists'] else 'NO':2s}  "
            f"{m['free ar']['ms_per_token']:.1f} -> {m[PURE]['ms_per_token']:.1f} "
            f"({m['monitor ar']['ms_per_token']:.1f} jump-forward) ms/token",
            flush=True,
        )

    def median(f):
        return statistics.median(f(r) for r in points)

    summary = {
        "points": len(points),
        "exists": {n: sum(r["methods"][n]["exists"] for r in points) for n in names},
        "intended": {n: sum(r["methods"][n]["intended"] for r in points) for n in names},
        "ms_per_token_median": {n: median(lambda r, n=n: r["methods"][n]["ms_per_token"]) for n in names},
        "overhead_median": {
            k: median(lambda r, k=k: r["monitor_overhead"][k])
            for k in ("ar, no jump-forward", "ar", "hybrid")
        },
        "jedi_calls_median": median(lambda r: r["methods"][PURE]["jedi_calls"]),
        "jedi_ms_per_token_median": median(
            lambda r: r["methods"][PURE]["jedi_ms"] / max(1, r["methods"][PURE]["tokens"])
        ),
        "forwards_per_16_tokens_median": {
            n: median(lambda r, n=n: r["methods"][n]["steps"] + 1) for n in names
        },
        "hybrid_equals_ar": all(all(r["hybrid_equals_ar"].values()) for r in points),
    }
    result = {
        "model": "SmolLM2-135M-Instruct (the default model), float32, raw completion (no chat template)",
        "max_new_tokens": args.max_new_tokens,
        "reps": args.reps,
        "threads": args.threads,
        "device": "cpu",
        "machine": {
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "summary": summary,
        "points": points,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    table.write_text(markdown(result))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
