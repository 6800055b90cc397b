"""The audit's negative control on a real model: does the sampling check catch a broken verifier
on a real vocabulary, as it does on the tiny models of tests/test_audit.py?

The verifier's resampling rule is broken the classic way (after a rejected draft token, sample
from p instead of the residual norm(max(0, p - q))), then ``specdecode.audit.audit`` runs with
the settings of the committed table (the same prompts, so the same sampling prompt). Greedy
decoding never uses the rule, so only the sampling check can fail.

    python benchmarks/audit/negative_control.py --methods hybrid,recycling,draft-model --samples 100 --tokens 12

(``draft-model`` drafts with the target itself, as ``--draft default`` does with the default model.)
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from specdecode import engine
from specdecode.audit import AuditConfig, AuditPrompt, audit
from specdecode.bench.datasets import load_prompts, round_robin
from specdecode.lossless import verify_without_residual
from specdecode.models.loader import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="pld,hybrid,recycling")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_model("default", device="cpu")
    prompts = round_robin(load_prompts(dataset="spec-bench"))[: args.prompts]
    encoded = [AuditPrompt(p.id, target.encode_prompt(p.text)) for p in prompts]
    engine.verify = verify_without_residual  # the engine calls verify through its module
    cfg = AuditConfig(samples=args.samples, tokens=args.tokens, max_new_tokens=8)
    methods = [(m, {}) for m in args.methods.split(",")]
    log = lambda s: print(f"audit: {s}", file=sys.stderr)  # noqa: E731
    results = audit(target, methods, encoded, cfg, draft=target, log=log)
    print(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
