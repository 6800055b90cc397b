"""Greedy identity with ar on 20 Spec-Bench prompts (untimed): for each method, every prompt's
new tokens compared with ar's, token for token.

    python benchmarks/self-drafting/identity.py --methods "swift;medusa;hydra;clover" --out identity.json
    python benchmarks/self-drafting/identity.py --out identity.json \
        --methods "swift-fixed=swift?skip=10,11,12,13&stop_head=online"

Methods are separated by ``;``, each ``[label=]method[?key=value&key=value]``.

The prompts: the first 4 of each of Spec-Bench's six categories, taken in turns over the
categories, the first 20 of those. ar's outputs are kept in the output file and reused by a
later run with other methods (merged into the same file).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from specdecode.bench.datasets import load_prompts, round_robin
from specdecode.engine import build_decoder
from specdecode.files import write_atomic
from specdecode.models.loader import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("default", device="cpu")
    prompts = round_robin(load_prompts(dataset="spec-bench", n_per_category=4))[: args.prompts]
    record = json.loads(args.out.read_text()) if args.out.is_file() else {}
    record.setdefault("model", lm.name)
    record["prompts"] = [{"id": p.id, "category": p.category} for p in prompts]
    record["max_new_tokens"] = args.max_new_tokens
    ids = [lm.encode_prompt(p.text) for p in prompts]
    if "ar" not in record or len(record["ar"]) != len(prompts):
        ar = build_decoder("ar", lm)
        record["ar"] = [ar.generate_ids(x, max_new_tokens=args.max_new_tokens).token_ids for x in ids]
    methods = record.setdefault("methods", {})
    for spec in [m.strip() for m in args.methods.split(";") if m.strip()]:
        head, _, query = spec.partition("?")
        label, _, method = head.rpartition("=")
        method, label = method.strip(), (label or method).strip()
        options = dict(kv.split("=", 1) for kv in query.split("&") if kv)
        decoder = build_decoder(method, lm, options=options)
        rows = []
        start = time.perf_counter()
        for prompt, x, want in zip(prompts, ids, record["ar"], strict=True):
            got = decoder.generate_ids(x, max_new_tokens=args.max_new_tokens)
            diff = next(
                (i for i, (a, b) in enumerate(zip(got.token_ids, want, strict=False)) if a != b), None
            )
            if diff is None and len(got.token_ids) != len(want):
                diff = min(len(got.token_ids), len(want))
            rows.append(
                {
                    "id": prompt.id,
                    "identical": diff is None,
                    "first_difference": diff,
                    "mean_accepted": round(got.mean_accepted, 3),
                    "steps": got.steps,
                    "drafted": got.drafted,
                    "phase_seconds": {k: round(v, 3) for k, v in got.phase_seconds.items()},
                }
            )
        steps = sum(r["steps"] for r in rows) or 1
        methods[label] = {
            "method": method,
            "options": options,
            "identical": sum(r["identical"] for r in rows),
            "of": len(rows),
            "mean_accepted": round(sum(r["mean_accepted"] for r in rows) / len(rows), 3),
            "drafted_per_step": round(sum(r["drafted"] for r in rows) / steps, 2),
            # ms per step in each phase: measured under other jobs' load, not under the bench lock
            "step_ms": {
                k: round(1000 * sum(r["phase_seconds"][k] for r in rows) / steps, 2)
                for k in rows[0]["phase_seconds"]
            },
            "seconds": round(time.perf_counter() - start, 1),
            "prompts": rows,
        }
        summary = methods[label]
        print(label, summary["identical"], "/", len(rows), "identical;", summary["mean_accepted"], flush=True)
        write_atomic(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
