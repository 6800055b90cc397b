"""Benchmark `specdecode serve` over loopback: a load test per method and concurrency, and a
Predicted Outputs case (an edit of a code snippet) against the same request without prediction.

Starts `specdecode serve` (the default model unless --model), warms each method up, then for
each method and concurrency level sends the same requests (Spec-Bench prompts taken round-robin
over its categories, greedy, --max-tokens new tokens at most) through the official openai
client, and checks every answer against `ar`'s answer to the same prompt at the lowest
concurrency that served it (alone, for the first prompts). Writes OUT.json (every figure and
text) and OUT.md (the tables).

    python scripts/bench_server.py --out benchmarks/server/cpu-2core-smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from specdecode.bench.datasets import load_prompts, round_robin
from specdecode.server.loadtest import run_load

SNIPPET = '''def summarize(items, key="price", limit=None):
    """Return the count, total, mean, smallest and largest value of `key` over `items`."""
    values = [item[key] for item in items if key in item]
    if limit is not None:
        values = values[:limit]
    if not values:
        return {"count": 0, "total": 0, "mean": None, "min": None, "max": None}
    total = sum(values)
    return {
        "count": len(values),
        "total": total,
        "mean": total / len(values),
        "min": min(values),
        "max": max(values),
    }


def cheapest(items, key="price"):
    """The item with the smallest `key`, or None when no item has one."""
    priced = [item for item in items if key in item]
    return min(priced, key=lambda item: item[key]) if priced else None
'''
EDIT = (
    "Rename the function `cheapest` to `find_cheapest` in this Python code. Answer with the whole code only."
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--methods", default="ar,hybrid")
    p.add_argument("--levels", default="1,4,16", help="concurrency levels")
    p.add_argument("--requests", default="4,4,16", help="requests per level: the first N prompts")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one request may take")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-active", type=int, default=8, help="the server's --max-active")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prediction-max-tokens", type=int, default=256)
    p.add_argument("--prediction-repeats", type=int, default=1)
    p.add_argument("--parts", default="load,prediction", help="what to run: load, prediction or both")
    p.add_argument("--chat-template", default=None, help="passed to specdecode serve")
    p.add_argument("--out", required=True, help="output path without extension")
    return p.parse_args(argv)


def start_server(args) -> tuple[subprocess.Popen, str]:
    argv = ["specdecode", "serve", "--model", args.model, "--port", "0", "--log-level", "warning"]
    argv += ["--threads", str(args.threads), "--max-active", str(args.max_active)]
    argv += ["--chat-template", args.chat_template] if args.chat_template else []
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        sys.stderr.write(line)
        if " on http://" in line:
            # keep reading its stderr, so the server never blocks on a full pipe
            threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()
            return proc, line.rsplit(" on ", 1)[1].strip()
    raise SystemExit(f"the server did not start (exit status {proc.wait()})")


def chat_request(text: str, method: str, max_tokens: int, **extra) -> dict:
    return {
        "endpoint": "chat",
        "model": "default",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "extra_body": {"specdecode": {"method": method}, **extra},
    }


def load_levels(url: str, args, prompts: list[str], rows: list, save) -> None:
    """Every method at every level; each answer is checked against `ar`'s answer to the same
    prompt at the lowest concurrency that served it (1 for the first prompts)."""
    reference = {}
    levels = [int(x) for x in args.levels.split(",")]
    counts = [int(x) for x in args.requests.split(",")]
    for method in args.methods.split(","):
        run_load(url, [chat_request(prompts[0], method, 8)], 1)  # warm-up
        for level, n in zip(levels, counts, strict=True):
            report = run_load(
                url,
                [chat_request(p, method, args.max_tokens) for p in prompts[:n]],
                level,
                timeout=args.timeout,
            )
            texts = [o.text for o in report.outcomes]
            for i, text in enumerate(texts):
                if text is not None:
                    reference.setdefault(i, (text, level))
            row = {"method": method, **report.summary(), "texts": texts}
            row["errors"] = [o.error for o in report.outcomes if o.error]
            row["identical_to_reference"] = sum(
                t is not None and t == reference.get(i, (None,))[0] for i, t in enumerate(texts)
            )
            row["reference_levels"] = sorted({reference[i][1] for i in range(n) if i in reference})
            rows.append(row)
            save()
            print(json.dumps({k: v for k, v in row.items() if k != "texts"}), file=sys.stderr)


def edit_prompt(model: str, chat_template: str | None = None) -> str:
    """The edit request as a raw prompt: the chat template's text with the assistant's answer
    begun by a code fence, as a code-editing client that prefills the answer sends it (a 135M
    model asked in plain chat talks about the code instead of rewriting it)."""
    from specdecode.models import load_model

    tok = load_model(model, device="cpu").tokenizer
    if chat_template:
        tok.chat_template = Path(chat_template).read_text()
    messages = [{"role": "user", "content": f"{EDIT}\n\n```python\n{SNIPPET}```"}]
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + "```python\n"


def prediction_case(url: str, args, rows: list, save) -> None:
    prompt = edit_prompt(args.model, args.chat_template)
    for method in args.methods.split(","):
        runs: dict[bool, list] = {False: [], True: []}
        for _ in range(args.prediction_repeats):
            for predicted in (False, True):
                extra = {"prediction": {"type": "content", "content": SNIPPET}} if predicted else {}
                req = {"endpoint": "completions", "model": "default", "prompt": prompt, "temperature": 0}
                req |= {"max_tokens": args.prediction_max_tokens, "stop": ["```"]}
                req["extra_body"] = {"specdecode": {"method": method}, **extra}
                runs[predicted].append(run_load(url, [req], 1, timeout=args.timeout).outcomes[0])
        base = runs[False][0].text
        for predicted, outs in runs.items():
            rows.append(_prediction_row(method, predicted, outs, base))
            save()
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "text"}), file=sys.stderr)


def _prediction_row(method: str, predicted: bool, outs: list, base: str) -> dict:
    usage = outs[0].usage
    details = usage.get("completion_tokens_details") or {}
    latency = statistics.median(o.latency for o in outs)
    return {
        "method": method,
        "prediction": predicted,
        "latency_s": round(latency, 3),
        "completion_tokens": usage["completion_tokens"],
        "tokens_per_second": round(usage["completion_tokens"] / latency, 2),
        "mean_accepted": usage["specdecode"]["mean_accepted"],
        "accepted_prediction_tokens": details.get("accepted_prediction_tokens", 0),
        "rejected_prediction_tokens": details.get("rejected_prediction_tokens", 0),
        "identical_to_no_prediction": all(o.text == base for o in outs),
        "runs": len(outs),
        "text": outs[0].text,
    }


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


def markdown(result: dict) -> str:
    a = result["args"]
    load = (
        [round(x, 2) for x in result["machine"]["load_average"]],
        [round(x, 2) for x in result["load_after"]],
    )
    lines = [
        f"# `specdecode serve` benchmark: {a['model']} model",
        "",
        f"Server `--max-active {a['max_active']}`, {a['threads']} torch threads; greedy. Load average (1, 5, "
        f"15 min) before / after: {load[0]} / {load[1]}. Command: `{result['command']}`.",
    ]
    if result["load"]:
        lines += _load_table(result)
    if result["prediction"]:
        lines += _prediction_table(result)
    return "\n".join(lines) + "\n"


def _load_table(result: dict) -> list[str]:
    a = result["args"]
    lines = [
        "",
        "## Load test",
        "",
        f"Chat requests: the first {a['requests']} Spec-Bench prompts (round-robin over the categories) at "
        f"concurrency {a['levels']}, at most {a['max_tokens']} new tokens. Tokens/s: all completion tokens "
        "over the level's wall time. Identical: the answer equals `ar`'s to the same prompt at the lowest "
        "concurrency that served it.",
        "",
        "| method | concurrency | requests ok | p50 latency s | p95 latency s | p50 first token s | tokens/s | "
        "mean accepted | identical to ar |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["load"]:
        lines.append(
            f"| {r['method']} | {r['concurrency']} | {r['ok']}/{r['requests']} | {r['latency_p50_s']} | "
            f"{r['latency_p95_s']} | {r['first_token_p50_s']} | {r['tokens_per_second']} | {r['mean_accepted']} | "
            f"{r['identical_to_reference']}/{r['requests']} |"
        )
    return lines


def _prediction_table(result: dict) -> list[str]:
    a = result["args"]
    lines = [
        "",
        "## Predicted Outputs: an edit of a code snippet",
        "",
        f"Prompt: {EDIT} The snippet ({len(SNIPPET.splitlines())} lines) follows in a fenced block; sent to "
        "/v1/completions as the chat template's text with the answer begun by a code fence, stop at the "
        f"closing fence; the prediction is the snippet. At most {a['prediction_max_tokens']} new tokens; "
        f"median of {a['prediction_repeats']} run(s).",
        "",
        "| method | prediction | latency s | tokens | tokens/s | mean accepted | accepted prediction tokens | "
        "rejected prediction tokens | identical to no prediction |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["prediction"]:
        lines.append(
            f"| {r['method']} | {'yes' if r['prediction'] else 'no'} | {r['latency_s']} | {r['completion_tokens']} | "
            f"{r['tokens_per_second']} | {r['mean_accepted']} | {r['accepted_prediction_tokens']} | "
            f"{r['rejected_prediction_tokens']} | {'yes' if r['identical_to_no_prediction'] else 'NO'} |"
        )
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    n = max(int(x) for x in args.requests.split(","))
    prompts = [p.text for p in round_robin(load_prompts(dataset="spec-bench", n_per_category=3))][:n]
    result = {"args": vars(args), "machine": machine(), "command": " ".join(sys.argv), "load": []}
    result["prediction"] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every row: an interrupted run keeps what it measured
        result["load_after"] = os.getloadavg()
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        out.with_suffix(".md").write_text(markdown(result))

    proc, url = start_server(args)
    try:
        start = time.time()
        if "load" in args.parts.split(","):
            load_levels(url, args, prompts, result["load"], save)
        if "prediction" in args.parts.split(","):
            prediction_case(url, args, result["prediction"], save)
        result["seconds"] = round(time.time() - start, 1)
        save()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
