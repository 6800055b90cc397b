"""What `specdecode bench` does not record for the lossy strategies, measured the bench's way
(warm-up first, then prompt by prompt with the runs' order rotated, wall clock per run):

- ``superposed``: k drafts from one pass against k separate samples (``ar`` at temperature
  0.8, top-p 0.95, one seed each), on the default model;
- ``entropy-adaptive``: the share of tokens the large model wrote, and its speed and agreement
  against the large model alone (``ar`` on ``--large``, greedy).

Agreement with the large/target model's greedy output: the length of the common prefix of
the two outputs over the length of ``ar``'s, and whether they are identical.

    python benchmarks/strategies/extras.py superposed --out benchmarks/strategies/superposed-cost.json
    python benchmarks/strategies/extras.py entropy --large qwen2.5-coder-0.5b --threshold 1.0 \
        --out benchmarks/strategies/entropy-adaptive.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from table import common_prefix  # benchmarks/strategies/table.py, beside this script

from specdecode.bench.datasets import load_prompts
from specdecode.engine import build_decoder
from specdecode.files import write_atomic
from specdecode.machine import machine_info
from specdecode.models.loader import load_model
from specdecode.sampling import SamplingConfig
from specdecode.strategies import build_strategy

CATEGORIES = ["mt_bench", "summarization", "qa", "rag"]


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def superposed(args, save) -> dict:
    lm = load_model("default", device="cpu")
    ar = build_decoder("ar", lm)
    spd = build_strategy("superposed", lm, options={"num_drafts": args.k})
    prompts = load_prompts(dataset="spec-bench", categories=CATEGORIES, n_per_category=args.n)
    encoded = [(p, lm.encode_prompt(p.text)) for p in prompts]
    greedy = SamplingConfig()

    def samples(ids, i):
        outs = []
        for j in range(args.k):
            cfg = SamplingConfig(temperature=0.8, top_p=0.95, seed=1000 * i + j)
            outs.append(ar.generate_ids(ids, max_new_tokens=args.tokens, sampling=cfg).token_ids)
        return outs

    runs = {
        "ar": lambda ids, i: ar.generate_ids(ids, max_new_tokens=args.tokens, sampling=greedy).token_ids,
        f"{args.k} samples": samples,
        f"superposed k={args.k}": lambda ids, i: spd.run(ids, max_new_tokens=args.tokens),
    }
    for fn in runs.values():  # warm-up
        fn(encoded[0][1][:64], 0)

    def finish(rows):
        ratio = [r[f"{args.k} samples"]["seconds"] / r[f"superposed k={args.k}"]["seconds"] for r in rows]
        per_token = [
            (r[f"{args.k} samples"]["seconds"] / r[f"{args.k} samples"]["tokens"])
            / (r[f"superposed k={args.k}"]["seconds"] / r[f"superposed k={args.k}"]["draft_tokens"])
            for r in rows
        ]
        return {
            "what": f"superposed decoding (k={args.k}) against {args.k} separate samples of ar",
            "rows": rows,
            "summary": {
                "median_time_ratio_samples_over_superposed": statistics.median(ratio),
                "median_seconds_per_draft_token_samples_over_superposed": statistics.median(per_token),
                "superposed_identical_to_ar": sum(r[f"superposed k={args.k}"]["identical"] for r in rows),
                "superposed_mean_agreement": statistics.mean(
                    r[f"superposed k={args.k}"]["agreement"] for r in rows
                ),
                "prompts": len(rows),
            },
        }

    rows = []
    for i, (p, ids) in enumerate(encoded):
        order = list(runs)[i % len(runs) :] + list(runs)[: i % len(runs)]
        row = {"id": p.id, "category": p.category, "prompt_tokens": len(ids)}
        for name in order:
            out, seconds = timed(runs[name], ids, i)
            row[name] = {"seconds": seconds, "out": out}
        ref = row["ar"]["out"]
        s = row[f"superposed k={args.k}"]
        spd_out = s["out"]
        s.update(
            out=spd_out.token_ids,
            tokens=len(spd_out.token_ids),
            drafts=[c.token_ids for c in spd_out.candidates],
            draft_tokens=sum(len(c.token_ids) for c in spd_out.candidates),
            forwards=spd_out.forwards,
            agreement=common_prefix(spd_out.token_ids, ref) / max(1, len(ref)),
            identical=spd_out.token_ids == ref,
        )
        sm = row[f"{args.k} samples"]
        sm["tokens"] = sum(len(o) for o in sm["out"])
        row["ar"]["tokens"] = len(ref)
        rows.append(row)
        save(finish(rows))
        print(p.id, {k: round(v["seconds"], 2) for k, v in row.items() if isinstance(v, dict)}, flush=True)
    return finish(rows)


def entropy(args, save) -> dict:
    large = load_model(args.large, device="cpu")
    small = load_model("default", device="cpu")
    ar = build_decoder("ar", large)
    ar_small = build_decoder("ar", small)
    ea = {
        t: build_strategy("entropy-adaptive", large, draft=small, options={"threshold": t})
        for t in args.threshold
    }
    prompts = load_prompts(dataset="spec-bench", categories=CATEGORIES, n_per_category=args.n)
    encoded = [(p, large.encode_prompt(p.text), small.encode_prompt(p.text)) for p in prompts]
    greedy = SamplingConfig()
    runs = {"ar (large)": lambda ids, sids: ar.generate_ids(ids, max_new_tokens=args.tokens, sampling=greedy)}
    runs["ar (small)"] = lambda ids, sids: ar_small.generate_ids(
        sids, max_new_tokens=args.tokens, sampling=greedy
    )
    for t, s in ea.items():
        runs[f"entropy-adaptive {t}"] = lambda ids, sids, s=s: s.run(ids, max_new_tokens=args.tokens)
    for fn in runs.values():  # warm-up
        fn(encoded[0][1][:48], encoded[0][2][:48])

    def finish(rows):
        summary = {}
        for name in runs:
            tps = statistics.mean(r[name]["tokens"] / r[name]["seconds"] for r in rows)
            summary[name] = {"tokens_per_second": tps}
        base = summary["ar (large)"]["tokens_per_second"]
        for name in runs:
            summary[name]["speed_vs_large_alone"] = summary[name]["tokens_per_second"] / base
        for t in args.threshold:
            name = f"entropy-adaptive {t}"
            large_tokens = sum(r[name]["large_tokens"] for r in rows)
            all_tokens = large_tokens + sum(r[name]["small_tokens"] for r in rows)
            summary[name].update(
                large_share=large_tokens / all_tokens,
                identical_to_large=sum(r[name]["identical"] for r in rows),
                mean_agreement=statistics.mean(r[name]["agreement"] for r in rows),
            )
        return {
            "what": f"entropy-adaptive: {small.name} (small) and {large.name} (large)",
            "rows": rows,
            "summary": summary,
            "prompts": len(rows),
        }

    rows = []
    for i, (p, ids, sids) in enumerate(encoded):
        order = list(runs)[i % len(runs) :] + list(runs)[: i % len(runs)]
        row = {"id": p.id, "category": p.category, "prompt_tokens": len(ids)}
        for name in order:
            out, seconds = timed(runs[name], ids, sids)
            row[name] = {"seconds": seconds, "tokens": len(out.token_ids), "text": out.text}
            if name.startswith("entropy"):
                row[name].update(out.stats, token_ids=out.token_ids)
            elif name == "ar (large)":
                row[name]["token_ids"] = out.token_ids
        ref = row["ar (large)"]["token_ids"]
        for t in args.threshold:
            r = row[f"entropy-adaptive {t}"]
            r["agreement"] = common_prefix(r["token_ids"], ref) / max(1, len(ref))
            r["identical"] = r["token_ids"] == ref
        rows.append(row)
        save(finish(rows))
        print(p.id, {k: round(v["seconds"], 1) for k, v in row.items() if isinstance(v, dict)}, flush=True)
    return finish(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["superposed", "entropy"])
    ap.add_argument("--n", type=int, default=2, help="prompts per category (4 categories)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--large", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threshold", type=float, action="append", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.threshold = args.threshold or [1.0]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    def save(result: dict, complete: bool = False) -> None:
        result["complete"] = complete
        result["meta"] = meta(args, load_before)
        write_atomic(Path(args.out), json.dumps(result, indent=1, default=str))

    result = superposed(args, save) if args.part == "superposed" else entropy(args, save)
    save(result, complete=True)
    print(json.dumps(result["summary"], indent=1))


def meta(args, load_before) -> dict:
    return {
        "command": "python benchmarks/strategies/extras.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(torch.device("cpu")),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "threads": args.threads,
        "max_new_tokens": args.tokens,
        "categories": CATEGORIES,
        "n_per_category": args.n,
        "code": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
