"""The transformers float32 logits of two outputs' tokens at their first difference, for a
difference in a `bench --turns all` run (the bench measures the margin on the run's own backend).

    python benchmarks/speed/tie_check.py RUN.json PROMPT_ID TURN METHOD [REFERENCE]

REFERENCE defaults to the run's identity reference. Prints the top-3 logits after the
conversation and the reference's common prefix, and the two tokens' logits and their gap.
"""

import json
import sys

import torch

from specdecode.bench.conversation import encode_turn
from specdecode.bench.datasets import read_jsonl, spec_bench_path
from specdecode.models.loader import load_model


def main() -> None:
    path, pid, turn, method = sys.argv[1:5]
    run = json.load(open(path))
    ref_name = sys.argv[5] if len(sys.argv) > 5 else run["meta"]["reference"]
    torch.set_num_threads(1)
    rec = next(p for p in run["prompts"] if str(p["id"]) == pid)["turns"]
    ref, out = rec[turn][ref_name]["token_ids"], rec[turn][method]["token_ids"]
    k = next(i for i, (a, b) in enumerate(zip(ref, out, strict=False)) if a != b)
    prompt = next(q for q in read_jsonl(spec_bench_path()) if str(q.id) == pid)
    lm = load_model(None, dtype="float32")
    first = lm.encode_prompt(prompt.text, raw=False)
    answers = [rec[str(t)][ref_name]["token_ids"] for t in range(1, int(turn))]
    ids = encode_turn(lm, prompt.user_turns(), answers, first, raw=False) + ref[:k]
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 3)
    print(f"context {len(ids)} tokens; first difference at {k}")
    print("top-3:", [(int(i), round(float(v), 5)) for i, v in zip(top.indices, top.values, strict=True)])
    a, b = float(logits[ref[k]]), float(logits[out[k]])
    print(f"{ref_name} chose {ref[k]} ({a:.5f}), {method} chose {out[k]} ({b:.5f}); gap {abs(a - b):.5f}")


if __name__ == "__main__":
    main()
