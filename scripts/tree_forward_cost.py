"""Forward cost of scoring 1 token, a 10-node chain and a 10-node tree after 128 and 700
tokens of context (default model, 2 threads, median of 10). Run on a quiet machine:

    python scripts/tree_forward_cost.py
"""

import statistics as st
import time

import torch

from specdecode.bench.datasets import read_jsonl, spec_bench_path
from specdecode.models.loader import load_model
from specdecode.target import Target
from specdecode.tree import DraftTree

torch.set_num_threads(2)
m = load_model(None)
rows = read_jsonl(spec_bench_path())
long_ids = m.encode_prompt(rows[160].text)[:700]
short_ids = long_ids[:128]
chain = DraftTree.chain(list(range(1000, 1010)))
tree = DraftTree(list(range(1000, 1010)), [-1, 0, 0, 1, 1, 2, 3, 3, 4, 5])
one = DraftTree.empty()


def timeit(ids, t, reps=12):
    tg = Target(m)
    out = []
    with torch.inference_mode():
        tg.prefill(ids[:-1])
        L = tg.length
        for _ in range(reps):
            s = time.perf_counter()
            tg.score(ids[-1], t)
            out.append(time.perf_counter() - s)
            tg.commit([])
            tg.crop(L)
    return 1000 * st.median(out[2:])


for name, ids in (("context 128", short_ids), ("context 700", long_ids)):
    a, b, c = timeit(ids, one), timeit(ids, chain), timeit(ids, tree)
    print(
        f"{name}: 1 token {a:.1f} ms, chain of 10 {b:.1f} ms ({b / a:.2f}x), tree of 10 {c:.1f} ms ({c / a:.2f}x)"
    )
