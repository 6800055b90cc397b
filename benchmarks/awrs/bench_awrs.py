"""What AWRS costs in grammar work per token, against the full-vocabulary mask.

On the default model (SmolLM2-135M-Instruct, vocabulary 49152) and JSON-schema prompts from
benchmarks/constraints/prompts.jsonl, sampled at temperature 1:

- **paired, per token** (AWRS alone, K = 1): at every state the sampler reaches, the number of
  grammar checks (llguidance ``validate_tokens`` of one token) AWRS makes to draw the token,
  the checks its weighted form would make (one more for the estimate of Z, as SMC uses it),
  and the seconds of those checks beside the seconds of the full mask at the same state
  (``compute_bitmask``, and the bool tensor the engine builds from it); AWRS's own draws use
  the mask after 16 rejections, as the library does, and its time includes it;
- **end to end**: tokens/s and checks per token of SMC with 8 particles (one batched forward
  per token), and tokens/s of the engine's masked sampling (``ar``, no jump-forward), with
  every finished answer validated with ``jsonschema``.

    taskset -c 1 python benchmarks/awrs/bench_awrs.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jsonschema
import torch

from specdecode.constraints import compile_constraint
from specdecode.constraints.awrs import allows, awrs_draw, smc
from specdecode.engine import build_decoder
from specdecode.models.loader import load_model
from specdecode.sampling import SamplingConfig
from specdecode.target import Target
from specdecode.tree import DraftTree

HERE = Path(__file__).parent
PROMPTS = HERE.parent / "constraints" / "prompts.jsonl"


@torch.inference_mode()
def paired(loaded, constraint, ids, seed, limit):
    """AWRS alone (K = 1), with the full mask computed (and timed) beside it at every state."""
    cfg = SamplingConfig(1.0, seed=seed)
    gen, side = cfg.generator(torch.device("cpu")), torch.Generator().manual_seed(seed + 1)
    guide = constraint.guide(loaded, cfg)
    target = Target(loaded)
    logits = target.prefill(ids)
    clock = time.perf_counter
    rows, out = [], []
    while len(out) < limit:
        probs = logits.softmax(-1)
        spent = [0.0]

        def timed(t, spent=spent):
            t0 = clock()
            ok = allows(guide, t)
            spent[0] += clock() - t0
            return ok

        def timed_mask(spent=spent):
            t0 = clock()
            m = guide.allowed()
            spent[0] += clock() - t0
            return m

        def full_mask():
            t0 = clock()
            guide.matcher.compute_bitmask()
            t1 = clock()
            m = guide.allowed()
            return t1 - t0, clock() - t1, m

        # llguidance caches lexer work per state: whichever runs first at a state pays for it,
        # so the two go first in turn (even tokens: AWRS first; odd: the mask first).
        awrs_first = len(rows) % 2 == 0
        if not awrs_first:
            bitmask_s, mask_s, mask = full_mask()
        d = awrs_draw(probs, timed, gen, weighted=False, mask=timed_mask)
        awrs_s = spent[0]
        if awrs_first:
            bitmask_s, mask_s, mask = full_mask()
        w = awrs_draw(probs, lambda t: allows(guide, t), side, weighted=True, mask=guide.allowed)
        rows.append(
            {"checks": d.checks, "masked": d.masked, "checks_weighted": w.checks, "awrs_first": awrs_first,
             "awrs_s": awrs_s, "bitmask_s": bitmask_s, "mask_s": mask_s, "allowed": int(mask.sum())}
        )  # fmt: skip
        if d.token is None:
            return out, rows, "constraint"
        out.append(d.token)
        if d.token in loaded.eos_token_ids:
            return out, rows, "eos"
        assert guide.matcher.consume_token(d.token)
        logits = target.score(d.token, DraftTree.empty())[0]
        target.commit([])
    return out, rows, "length"


def valid(loaded, schema, token_ids, finish):
    if finish != "eos":
        return None
    text = loaded.tokenizer.decode([t for t in token_ids if t not in loaded.eos_token_ids])
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=6, help="every 4th prompt of prompts.jsonl, this many")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("default", device="cpu")
    lines = [json.loads(x) for x in PROMPTS.read_text().splitlines() if x.strip()]
    prompts = lines[::4][: args.prompts]
    decoder = build_decoder("ar", loaded)
    runs = []
    for p in prompts:
        constraint = compile_constraint(loaded, json_schema=p["schema"], jump_forward=False)
        ids = loaded.encode_prompt(p["prompt"])
        for seed in range(args.seeds):
            out, rows, finish = paired(loaded, constraint, ids, seed, args.max_new_tokens)
            t0 = time.perf_counter()
            o = smc(
                loaded, ids, constraint, SamplingConfig(1.0, seed=seed), args.max_new_tokens, args.particles
            )
            smc_s = time.perf_counter() - t0
            r = decoder.generate_ids(
                ids, max_new_tokens=args.max_new_tokens, constraint=constraint,
                sampling=SamplingConfig(1.0, seed=seed, coupling="residual"),
            )  # fmt: skip
            run = {
                "prompt": p["id"], "seed": seed, "tokens": len(out), "finish": finish,
                "valid": valid(loaded, p["schema"], out, finish), "per_token": rows,
                "smc": {"particles": args.particles, "tokens": len(o.token_ids), "finish": o.finish_reason,
                        "valid": valid(loaded, p["schema"], o.token_ids, o.finish_reason),
                        "checks_per_drawn_token": o.checks / max(1, o.tokens_drawn), "resamples": o.resamples,
                        "seconds": smc_s, "tokens_per_second": len(o.token_ids) / smc_s},
                "mask": {"tokens": r.new_tokens, "finish": r.finish_reason,
                         "valid": valid(loaded, p["schema"], r.token_ids, r.finish_reason),
                         "tokens_per_second": r.tokens_per_second},
            }  # fmt: skip
            runs.append(run)
            print(
                f"{p['id']} seed {seed}: {len(out)} tokens ({finish}), "
                f"{statistics.mean(x['checks'] for x in rows):.2f} checks/token, "
                f"smc {o.finish_reason} {len(o.token_ids)} tokens, mask {r.finish_reason} {r.new_tokens} tokens",
                flush=True,
            )
    per = [x for run in runs for x in run["per_token"]]

    def q(values, f):
        values = sorted(values)
        return values[min(len(values) - 1, int(f * len(values)))]

    checks = [x["checks"] for x in per]
    summary = {
        "tokens": len(per),
        "vocab": loaded.tokenizer.vocab_size if hasattr(loaded.tokenizer, "vocab_size") else None,
        "checks_per_token": {"mean": statistics.mean(checks), "median": statistics.median(checks),
                             "p90": q(checks, 0.9), "p99": q(checks, 0.99), "max": max(checks),
                             "share_first_draw_accepted": sum(c == 1 for c in checks) / len(checks)},
        "checks_per_token_weighted_mean": statistics.mean(x["checks_weighted"] for x in per),
        "allowed_tokens_per_mask_median": statistics.median(x["allowed"] for x in per),
        "share_of_tokens_needing_the_mask": sum(x["masked"] for x in per) / len(per),
        "grammar_us_per_token": {
            f"{what} ({order})": {"mean": 1e6 * statistics.mean(x[key] for x in rows),
                                  "median": 1e6 * statistics.median(x[key] for x in rows)}
            for order, rows in (("awrs first", [x for x in per if x["awrs_first"]]),
                                ("mask first", [x for x in per if not x["awrs_first"]]))
            for what, key in (("awrs checks (+ mask when needed)", "awrs_s"), ("compute_bitmask", "bitmask_s"),
                              ("engine mask (bitmask + bool tensor)", "mask_s"))
        },
        "awrs_k1_valid": f"{sum(r['valid'] is True for r in runs)}/{sum(r['finish'] == 'eos' for r in runs)} "
                         f"finished ({len(runs)} runs)",
        "smc_valid": f"{sum(r['smc']['valid'] is True for r in runs)}/"
                     f"{sum(r['smc']['finish'] == 'eos' for r in runs)} finished ({len(runs)} runs)",
        "smc_checks_per_drawn_token_mean": statistics.mean(r["smc"]["checks_per_drawn_token"] for r in runs),
        "smc_tokens_per_second_median": statistics.median(r["smc"]["tokens_per_second"] for r in runs),
        "mask_valid": f"{sum(r['mask']['valid'] is True for r in runs)}/"
                      f"{sum(r['mask']['finish'] == 'eos' for r in runs)} finished ({len(runs)} runs)",
        "mask_tokens_per_second_median": statistics.median(r["mask"]["tokens_per_second"] for r in runs),
    }  # fmt: skip
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(), "torch": torch.__version__,
    }  # fmt: skip
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config["prompt_ids"] = [p["id"] for p in prompts]
    Path(args.out).write_text(
        json.dumps({"config": config, "machine": machine, "summary": summary, "runs": runs}, indent=1) + "\n"
    )
    print(json.dumps(summary, indent=1))
    assert not math.isnan(summary["checks_per_token"]["mean"])


if __name__ == "__main__":
    main()
