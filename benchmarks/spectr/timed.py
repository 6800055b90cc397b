"""SpecTr timed on a real model: the default model as target, a shallow copy of it as draft.

No two real models available offline share a tokenizer, and a sampled multi-draft needs the
draft's q over the target's tokens. So the draft here is made from the target itself: its first
``--draft-layers`` decoder layers, with its final norm and LM head (a layer-truncated
self-draft, untrained: the same family as Kangaroo's shallow sub-network, without its
adapter). It shares the tokenizer, costs about layers/30 of a target forward, and its q differs
from p, which is the setting where k drafts can pay.

Every variant runs on every prompt in the same process, the order rotated prompt by prompt, one
warm-up generation first; sampling at ``--temperature`` with the residual coupling (speculative
sampling as in the papers), seed i on prompt i for every variant, so all variants sample from
the same distribution (not the same text):

    flock /tmp/specdecode-bench.lock taskset -c 0 python benchmarks/spectr/timed.py \\
        --out benchmarks/spectr/timed.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import time

import torch

from specdecode.bench.datasets import load_prompts
from specdecode.engine import build_decoder
from specdecode.models.loader import LoadedModel, load_model
from specdecode.sampling import SamplingConfig

VARIANTS = [  # (label, method, options)
    ("ar", "ar", {}),
    ("draft-model, 1 chain", "draft-model", {"drafts": 1}),
    ("draft-model, k=2 spectr", "draft-model", {"drafts": 2, "verifier": "spectr"}),
    ("draft-model, k=4 spectr", "draft-model", {"drafts": 4, "verifier": "spectr"}),
    ("draft-model, k=4 rrs", "draft-model", {"drafts": 4, "verifier": "rrs"}),
]


def shallow_copy_of(target: LoadedModel, layers: int) -> LoadedModel:
    """The target's first ``layers`` decoder layers, final norm and LM head, as a model of its own."""
    model = copy.deepcopy(target.model)
    inner = model.model
    inner.layers = inner.layers[:layers]
    config = model.config
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:layers])
    return dataclasses.replace(
        target, model=model, name=f"{target.name} (first {layers} layers)", key=f"{target.key}-first{layers}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-category", type=int, default=1, help="Spec-Bench prompts per category")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per prompt")
    ap.add_argument("--draft-layers", type=int, default=8)
    ap.add_argument("--max-draft", type=int, default=4, help="draft depth (the draft-model option max_draft)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_model(None, device="cpu", dtype="float32")
    draft = shallow_copy_of(target, args.draft_layers)
    prompts = load_prompts(dataset="spec-bench", n_per_category=args.n_per_category)
    ids = [target.encode_prompt(p.text) for p in prompts]

    decoders = []
    for label, method, opts in VARIANTS:
        options = dict(opts)
        if method == "draft-model":
            options.update({"max_draft": args.max_draft, "threshold": 0.0, "adapt": 0.0})
        decoders.append((label, options, build_decoder(method, target, draft=draft, options=options)))

    def sampling(i: int) -> SamplingConfig:
        return SamplingConfig(temperature=args.temperature, seed=i, coupling="residual")

    for _, _, dec in decoders:  # warm-up
        dec.generate_ids(ids[0], max_new_tokens=16, sampling=sampling(0))

    records = {label: [] for label, _, _ in decoders}
    for i, prompt in enumerate(ids):
        turn = decoders[i % len(decoders) :] + decoders[: i % len(decoders)]
        for label, _, dec in turn:
            t0 = time.perf_counter()
            r = dec.generate_ids(prompt, max_new_tokens=args.tokens, sampling=sampling(i))
            seconds = time.perf_counter() - t0
            steps = max(1, r.steps)
            records[label].append(
                {
                    "prompt": prompts[i].id,
                    "category": prompts[i].category,
                    "tokens": r.new_tokens,
                    "seconds": seconds,
                    "tokens_per_s": r.new_tokens / seconds,
                    "steps": r.steps,
                    "accepted_after_prefill": sum(r.accepted_lengths),
                    "mean_accepted": r.mean_accepted,
                    "nodes_per_step": r.drafted / steps,
                }
            )
        print(f"prompt {i + 1}/{len(ids)} done", flush=True)

    base = statistics.median(r["tokens_per_s"] for r in records["ar"])
    rows = []
    for label, options, _ in decoders:
        recs = records[label]
        tps = statistics.median(r["tokens_per_s"] for r in recs)
        ratios = [r["tokens_per_s"] / a["tokens_per_s"] for r, a in zip(recs, records["ar"], strict=True)]
        # pooled over the steps of all prompts: tokens committed per target forward
        lengths = sum(r["accepted_after_prefill"] for r in recs) / max(1, sum(r["steps"] for r in recs))
        row = {
            "variant": label,
            "options": options,
            "median_tokens_per_s": tps,
            "speedup_vs_ar_of_medians": tps / base,
            "median_per_prompt_speedup_vs_ar": statistics.median(ratios),
            "mean_accepted": lengths,
            "nodes_per_step": statistics.mean(r["nodes_per_step"] for r in recs),
        }
        rows.append(row)
        print(
            f"| {label} | {tps:.2f} | {row['speedup_vs_ar_of_medians']:.2f}x | "
            f"{row['median_per_prompt_speedup_vs_ar']:.2f}x | {lengths:.2f} | {row['nodes_per_step']:.1f} |"
        )
    if args.out:
        meta = {
            "target": target.name,
            "draft": draft.name,
            "prompts": len(ids),
            "tokens": args.tokens,
            "temperature": args.temperature,
            "max_draft": args.max_draft,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
