#!/usr/bin/env python
"""Check that specdecode's own greedy loop (`ar`, or any method) gives exactly the tokens of
transformers' `generate(do_sample=False)` on Spec-Bench prompts (first turn), and time both.

    python scripts/check_greedy_equivalence.py                      # all 480 prompts, 64 new tokens
    python scripts/check_greedy_equivalence.py --limit 20 --every 24 # 20 prompts across the set
    python scripts/check_greedy_equivalence.py --method pld --out r.json

Prints one line per prompt and a summary: identical count, and the ratio of the loop's
tokens/s to generate()'s (Spec-Bench's definition: mean of per-prompt tokens/s, each side)
measured in the same run, the two interleaved prompt by prompt in alternating order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from tqdm import tqdm

from specdecode.bench.datasets import read_jsonl, spec_bench_path
from specdecode.engine import build_decoder
from specdecode.models.loader import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--method", default="ar")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="at most this many prompts (0 = all)")
    ap.add_argument("--every", type=int, default=1, help="take every k-th prompt of the set")
    ap.add_argument("--start", type=int, default=0, help="skip the first N prompts (to resume a run)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=None, help="write per-prompt results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    decoder = build_decoder(args.method, loaded)
    prompts = read_jsonl(spec_bench_path())[args.start :: args.every]
    if args.limit:
        prompts = prompts[: args.limit]
    model, eos = loaded.model, sorted(loaded.eos_token_ids)

    def hf(ids):
        x = torch.tensor([ids], device=loaded.device)
        t = time.perf_counter()
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=eos[0])  # fmt: skip
        dt = time.perf_counter() - t
        new = out[0, len(ids) :].tolist()
        return new, len(new) / dt

    def ours(ids):
        r = decoder.generate_ids(ids, max_new_tokens=args.max_new_tokens)
        return r.token_ids, r.tokens_per_second

    warm = loaded.encode_prompt(prompts[0].text)
    hf(warm), ours(warm)
    rows, same = [], 0
    for i, p in enumerate(tqdm(prompts, desc=f"{args.method} vs generate()", unit="prompt")):
        ids = loaded.encode_prompt(p.text)
        order = (hf, ours) if i % 2 == 0 else (ours, hf)
        res = {f.__name__: f(ids) for f in order}
        ok = res["hf"][0] == res["ours"][0]
        same += ok
        rows.append({"id": p.id, "category": p.category, "identical": ok,
                     "hf_tps": res["hf"][1], "ours_tps": res["ours"][1]})  # fmt: skip
        if not ok:
            a, b = res["hf"][0], res["ours"][0]
            k = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            tqdm.write(f"prompt {p.id} ({p.category}): first difference at new token {k}")
        if (i + 1) % 20 == 0:
            tqdm.write(f"checked {i + 1} prompts from index {args.start}: {same} identical")
    hf_mean = statistics.fmean(r["hf_tps"] for r in rows)
    ours_mean = statistics.fmean(r["ours_tps"] for r in rows)
    summary = {"prompts": len(rows), "identical": same, "hf_tokens_per_second": hf_mean,
               "ours_tokens_per_second": ours_mean, "ratio": ours_mean / hf_mean,
               "median_ratio": statistics.median(r["ours_tps"] / r["hf_tps"] for r in rows),
               "method": args.method, "max_new_tokens": args.max_new_tokens,
               "threads": torch.get_num_threads()}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "prompts": rows}, f, indent=1)
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
