"""What SpecTr's k drafts buy in accepted tokens: draft-model with drafts=k, verified by K-SEQ
(verifier=spectr) or by recursive rejection sampling over k chains (verifier=rrs), against one
sampled chain, under speculative sampling (residual coupling, temperature 1).

No two real models available offline share a tokenizer (a sampled multi-draft needs the draft's
q over the target's tokens), and a model drafting for itself has q = p, where one draft is
already accepted in full. So this measures on small random models built in code
(specdecode.models.testing): a target and a different draft over the same 64-token
vocabulary. Acceptance only, no timing:

    python benchmarks/spectr/acceptance.py --out benchmarks/spectr/acceptance.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from specdecode.engine import build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

VARIANTS = [  # (label, options)
    ("1 chain", {"drafts": 1}),
    ("k=2 spectr", {"drafts": 2, "verifier": "spectr"}),
    ("k=4 spectr", {"drafts": 4, "verifier": "spectr"}),
    ("k=8 spectr", {"drafts": 8, "verifier": "spectr"}),
    ("k=4 rrs", {"drafts": 4, "verifier": "rrs"}),
    ("k=8 rrs", {"drafts": 8, "verifier": "rrs"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--max-draft", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3, eos_token_id=None)
    draft = tiny_model_for_tests(vocab_size=64, seed=4, initializer_range=0.3, eos_token_id=None)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 64, (8,), generator=gen).tolist() for _ in range(args.prompts)]
    rows = []
    for label, opts in VARIANTS:
        options = {"threshold": 0.0, "adapt": 0.0, "max_draft": args.max_draft, **opts}
        dec = build_decoder("draft-model", target, draft=draft, options=options)
        lengths, nodes = [], []
        for i, prompt in enumerate(prompts):
            cfg = SamplingConfig(temperature=1.0, seed=i, coupling="residual")
            r = dec.generate_ids(prompt, max_new_tokens=args.tokens, sampling=cfg)
            lengths += r.accepted_lengths
            nodes.append(r.drafted / max(1, len(r.accepted_lengths)))
        row = {
            "variant": label,
            "options": options,
            "mean_accepted": sum(lengths) / len(lengths),
            "nodes_per_step": statistics.mean(nodes),
            "steps": len(lengths),
        }
        rows.append(row)
        print(f"| {label} | {row['mean_accepted']:.2f} | {row['nodes_per_step']:.1f} |", flush=True)
    if args.out:
        meta = {
            "prompts": args.prompts,
            "tokens": args.tokens,
            "max_draft": args.max_draft,
            "torch": torch.__version__,
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
