"""Constrained generation benchmark: JSON-schema extraction on the default model.

Every prompt of prompts.jsonl (an extraction instruction and the schema its answer must follow)
is answered, greedily, by:

- ``hf-generate``: transformers ``model.generate()`` with the schema's mask applied by a
  ``LogitsProcessor`` (:class:`specdecode.constraints.hf.GrammarLogitsProcessor`, llguidance's
  mask), the plain-decoding baseline;
- ``ar (mask)``: this engine, plain decoding with the mask, no jump-forward;
- ``ar + jump-forward``: the tokens the grammar forces drafted for free;
- ``hybrid (mask)``: speculative decoding (pld + aded + recycling), the drafts pruned to the
  grammar, no jump-forward;
- ``hybrid + jump-forward``.

Measured in one run, methods in a rotating order per prompt (so drift in the machine's load
falls on all of them), after an untimed warm-up of each. Every answer is checked with
``jsonschema``, and every engine answer against ``ar (mask)``'s tokens (greedy identity).

    flock /tmp/specdecode-bench.lock python benchmarks/constraints/bench_constraints.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jsonschema
import torch

from specdecode.constraints import compile_constraint
from specdecode.constraints.hf import GrammarLogitsProcessor
from specdecode.engine import build_decoder
from specdecode.models.loader import load_model

HERE = Path(__file__).parent
ENGINE = {
    "ar (mask)": ("ar", False),
    "ar + jump-forward": ("ar", True),
    "hybrid (mask)": ("hybrid", False),
    "hybrid + jump-forward": ("hybrid", True),
}
BASELINE = "hf-generate"
REFERENCE = "ar (mask)"


def hf_generate(loaded, constraint, ids, max_new_tokens):
    from transformers import LogitsProcessorList

    eos = sorted(loaded.eos_token_ids)
    x = torch.tensor([ids], device=loaded.device)
    processor = GrammarLogitsProcessor(constraint, loaded.eos_token_ids)
    out = loaded.model.generate(
        x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=eos[0],
        logits_processor=LogitsProcessorList([processor]),
    )
    return out[0, len(ids) :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: spinning workers on a shared machine cost more)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    prompts = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    prompts = prompts[: args.limit] if args.limit else prompts
    load_start = os.getloadavg()
    loaded = load_model("default", device="cpu")
    decoders = {name: build_decoder(method, loaded) for name, (method, _) in ENGINE.items()}
    methods = [BASELINE, *ENGINE]

    def run(name, item, ids, constraints, max_new):
        start = time.perf_counter()
        if name == BASELINE:
            out = hf_generate(loaded, constraints[True], ids, max_new)
            seconds = time.perf_counter() - start
            return {"token_ids": out, "seconds": seconds, "forwards": None, "mean_accepted": None}
        method, jump = ENGINE[name]
        r = decoders[name].generate_ids(ids, max_new_tokens=max_new, constraint=constraints[jump])
        seconds = time.perf_counter() - start
        return {
            "token_ids": r.token_ids,
            "seconds": seconds,
            "forwards": r.steps + 1,
            "mean_accepted": r.mean_accepted,
            "finish_reason": r.finish_reason,
        }

    # warm-up (untimed): every method once, on the first prompt
    first = prompts[0]
    ids0 = loaded.encode_prompt(first["prompt"])
    c0 = {j: compile_constraint(loaded, json_schema=first["schema"], jump_forward=j) for j in (False, True)}
    for name in methods:
        run(name, first, ids0, c0, 24)

    records = []
    compile_seconds = []
    for i, item in enumerate(prompts):
        ids = loaded.encode_prompt(item["prompt"])
        t = time.perf_counter()
        constraints = {
            j: compile_constraint(loaded, json_schema=item["schema"], jump_forward=j) for j in (False, True)
        }
        compile_seconds.append((time.perf_counter() - t) / 2)
        order = methods[i % len(methods) :] + methods[: i % len(methods)]
        outs = {}
        for name in order:
            outs[name] = run(name, item, ids, constraints, args.max_new_tokens)
        for name in methods:
            o = outs[name]
            ids_out = o["token_ids"]
            body = [t for t in ids_out if t not in loaded.eos_token_ids]
            text = loaded.tokenizer.decode(body, skip_special_tokens=True)
            try:
                jsonschema.validate(json.loads(text), item["schema"])
                valid, error = True, None
            except (json.JSONDecodeError, jsonschema.ValidationError) as e:
                valid, error = False, str(e).splitlines()[0]
            records.append(
                {
                    "prompt": item["id"],
                    "method": name,
                    "new_tokens": len(ids_out),
                    "seconds": o["seconds"],
                    "tokens_per_second": len(ids_out) / o["seconds"],
                    "forwards": o["forwards"],
                    "mean_accepted": o["mean_accepted"],
                    "valid": valid,
                    "error": error,
                    "identical_to_reference": ids_out == outs[REFERENCE]["token_ids"],
                    "text": text,
                }
            )
        print(f"[{i + 1}/{len(prompts)}] {item['id']}: " + ", ".join(
            f"{n} {len(outs[n]['token_ids']) / outs[n]['seconds']:.1f} tok/s" for n in methods
        ), flush=True)  # fmt: skip

    summary = {}
    for name in methods:
        rs = [r for r in records if r["method"] == name]
        base = {r["prompt"]: r["tokens_per_second"] for r in records if r["method"] == BASELINE}
        summary[name] = {
            "prompts": len(rs),
            "median_tokens_per_second": statistics.median(r["tokens_per_second"] for r in rs),
            "tokens": sum(r["new_tokens"] for r in rs),
            "seconds": sum(r["seconds"] for r in rs),
            "median_speedup_vs_hf": statistics.median(r["tokens_per_second"] / base[r["prompt"]] for r in rs),
            "valid": sum(r["valid"] for r in rs),
            "identical_to_ar_mask": sum(r["identical_to_reference"] for r in rs),
            "mean_accepted": (
                sum(r["new_tokens"] for r in rs) / sum(r["forwards"] for r in rs)
                if rs[0]["forwards"]
                else None
            ),
        }
    result = {
        "benchmark": "constrained generation: JSON-schema extraction, greedy",
        "command": "flock /tmp/specdecode-bench.lock python benchmarks/constraints/bench_constraints.py",
        "model": loaded.name,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "shared": "other jobs ran on the same 2 cores during the run (see the load averages)",
        },
        "max_new_tokens": args.max_new_tokens,
        "grammar_compile_seconds_median": statistics.median(compile_seconds),
        "summary": summary,
        "records": records,
    }
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result) -> str:
    s = result["summary"]
    lines = [
        "# Constrained generation: JSON-schema extraction",
        "",
        f"{result['model']}, greedy, {s[BASELINE]['prompts']} prompts (benchmarks/constraints/prompts.jsonl), "
        f"at most {result['max_new_tokens']} new tokens, CPU, {result['torch_threads']} torch threads. "
        f"Load average {result['machine']['load_average_start'][0]:.1f} at the start and "
        f"{result['machine']['load_average_end'][0]:.1f} at the end on "
        f"{result['machine']['cpu_count']} cores: the machine was shared with other jobs, so absolute "
        "figures are low and noisy; the ratios compare methods measured in the same run, in a "
        "rotating order per prompt.",
        "",
        "| method | median tokens/s | median speedup vs hf-generate | tokens per forward | valid JSON (schema) | identical to ar (mask) |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in s.items():
        acc = f"{v['mean_accepted']:.2f}" if v["mean_accepted"] else "1 (by construction)"
        lines.append(
            f"| {name} | {v['median_tokens_per_second']:.2f} | {v['median_speedup_vs_hf']:.2f}x | {acc} | "
            f"{v['valid']}/{v['prompts']} | {v['identical_to_ar_mask']}/{v['prompts']} |"
        )
    lines += [
        "",
        f"Grammar compilation (schema to llguidance grammar, checked against the tokenizer): median "
        f"{result['grammar_compile_seconds_median'] * 1000:.1f} ms per schema, outside the timed generation.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
