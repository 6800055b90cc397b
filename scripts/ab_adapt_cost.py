"""A/B: hybrid with and without the online cost correction (adapt_cost), interleaved prompt by
prompt in one process, 2 threads, 256 new tokens. Run on a quiet machine:

    python scripts/ab_adapt_cost.py
"""

import statistics as st

import torch

from specdecode.bench.datasets import read_jsonl, spec_bench_path
from specdecode.engine import build_decoder
from specdecode.models.loader import load_model

torch.set_num_threads(2)
m = load_model(None)
rows = read_jsonl(spec_bench_path())
cats = {"mt_bench": 0, "summarization": 160, "qa": 240, "rag": 400}
prompts = [rows[base + j] for j in (20, 21) for base in cats.values()]
ntok = 256
decs = {
    "ar": build_decoder("ar", m),
    "hybrid-fixed": build_decoder("hybrid", m, options={"adapt_cost": False}),
    "hybrid-adapt": build_decoder("hybrid", m),
}
w = m.encode_prompt(rows[5].text)
for d in decs.values():
    d.generate_ids(w, max_new_tokens=32)
res = {k: [] for k in decs}
names = list(decs)
for i, p in enumerate(prompts):
    ids = m.encode_prompt(p.text)
    order = names[i % 3 :] + names[: i % 3]
    out = {}
    for k in order:
        r = decs[k].generate_ids(ids, max_new_tokens=ntok)
        out[k] = r
        res[k].append(
            (
                p.category,
                r.tokens_per_second,
                r.mean_accepted,
                r.drafted / max(r.steps, 1),
                1000 * r.phase_seconds["forward"] / max(r.steps, 1),
            )
        )
    same = all(out[k].token_ids == out["ar"].token_ids for k in out)
    print(
        p.id,
        p.category,
        len(ids),
        "identical" if same else "DIFF",
        " ".join(f"{k}={out[k].tokens_per_second:.1f}" for k in names),
        flush=True,
    )
for k, v in res.items():
    print(
        f"{k:14s} tok/s={st.mean(x[1] for x in v):.2f} acc={st.mean(x[2] for x in v):.2f} nodes/step={st.mean(x[3] for x in v):.1f} fwd_ms={st.mean(x[4] for x in v):.1f}"
    )
for k in ("hybrid-fixed", "hybrid-adapt"):
    print(
        k,
        "speedup vs ar (mean of tok/s):",
        round(st.mean(x[1] for x in res[k]) / st.mean(x[1] for x in res["ar"]), 3),
    )
