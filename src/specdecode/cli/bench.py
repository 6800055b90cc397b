"""``specdecode bench``: every method side by side with plain transformers, in one run."""

from __future__ import annotations

import argparse
import shlex
import sys

from specdecode.cli.common import add_device_arguments, set_threads
from specdecode.errors import SpecDecodeError

DESCRIPTION = """\
Run several decoding methods over a prompt set on one model and report tokens/s (mean over
prompts), speedup over hf-ar (Spec-Bench's definition), mean accepted tokens per target
forward, acceptance histograms, peak memory and, under greedy decoding, whether each output
is identical to ar's (a difference is classed as a floating-point near-tie or a real error).

Methods: the project's own (see `specdecode methods`: ar, pld, draft-model, ...) and the
transformers baselines hf-ar (generate), hf-pld (prompt lookup) and hf-assisted (assisted
generation with --draft). The strategies (`specdecode methods --strategies`: diverse-beam,
superposed, exact-extract spanning the prompt itself, entropy-adaptive with --draft as the
small model) run beside them, greedy only: their output differs from ar's by design, and the
comparison with ar measures how far. Warm-up runs come first and are not counted; methods are
then interleaved prompt by prompt in a rotating order.

Writes FILE.json (summary, categories, per-prompt figures, meta), FILE.md and the plots
FILE-speedup.png, FILE-accept.png and FILE-latency.png (when a latency calibration is cached;
see `specdecode calibrate`). The JSON is rewritten after each prompt; Ctrl-C or SIGTERM keeps
what was gathered, marked "interrupted": true (exit status 130 after Ctrl-C, 143 after SIGTERM).
--out is checked for writing (a probe file beside it) before the first prompt runs."""

EPILOG = """\
examples:
  specdecode bench --methods ar,hf-ar,hf-pld,pld --prompts my.jsonl --max-new-tokens 32 --out r.json
  specdecode bench --dataset spec-bench --n-per-category 5 --out spec.json
  specdecode bench --dataset spec-bench --categories summarization,rag --methods hf-ar,hf-pld,pld
  specdecode bench --methods hf-ar,ar,draft-model,hf-assisted --draft path/to/small-model
  specdecode bench --methods hf-ar,pld --method-option pld.draft_len=5 --method-option hf-pld.prompt_lookup_num_tokens=5
  specdecode bench --categories mt_bench --turns all --methods hf-ar,ar,hybrid --out chat.json
  specdecode bench --methods hf-ar,ar,diverse-beam,superposed,exact-extract --max-new-tokens 64
  specdecode bench --compare old.json new.json

prompt files (JSONL): one object a line with "prompt" (a string) or "turns" (a list: the first
turn, and with --turns all the follow-ups too), and optionally "category" and "id" or "question_id".
Spec-Bench categories: mt_bench, translation, summarization, qa, math_reasoning, rag (the
eight MT-bench categories, e.g. coding, can also be asked for by name)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark methods against transformers baselines on a prompt set",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(p.add_argument_group("models"))
    _add_method_options(p.add_argument_group("methods"))
    _add_prompt_options(p.add_argument_group("prompts"))
    _add_decoding_options(p.add_argument_group("decoding"))
    _add_output_options(p.add_argument_group("output"))
    p.set_defaults(func=run)
    return p


def _add_model_options(g) -> None:
    g.add_argument(
        "--model",
        default=None,
        help="target model: a HF folder, a .gguf file or a cached hub id (default: the embedded SmolLM2-135M-Instruct)",
    )
    g.add_argument("--draft", default=None, help="draft model for draft-model and hf-assisted")
    add_device_arguments(
        g, threads_help="torch CPU threads (default: torch's choice); recorded in the result"
    )
    from specdecode.backends import add_backend_argument

    add_backend_argument(g)


def _add_method_options(g) -> None:
    g.add_argument(
        "--methods", default="hf-ar,hf-pld,ar,pld", help="comma-separated method names (default: %(default)s)"
    )
    g.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="an option for one method, e.g. pld.draft_len=5 (repeatable)",
    )


def _add_prompt_options(g) -> None:
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--dataset", choices=["spec-bench"], default=None, help="an embedded prompt set (default: spec-bench)"
    )
    src.add_argument("--prompts", default=None, metavar="FILE", help="a JSONL prompt file")
    g.add_argument("--categories", default=None, help="comma-separated categories to keep (default: all)")
    g.add_argument(
        "--n-per-category",
        type=int,
        default=None,
        help="prompts per category: the first N, or N drawn with --prompt-seed (default: 10 for spec-bench, all for --prompts)",
    )
    g.add_argument(
        "--prompt-seed",
        type=int,
        default=None,
        help="draw the prompts of each category with this seed instead of taking the first N",
    )
    g.add_argument("--raw", action="store_true", help="feed prompts as plain text, without the chat template")
    g.add_argument(
        "--turns",
        default="1",
        metavar="1|N|all",
        help="user turns per prompt (default: 1, the first only). With 'all' (or N), a prompt with "
        "several turns (Spec-Bench's mt_bench, a prompt file's 'turns') is a conversation: turn 1 is "
        "generated, then each later turn runs after the earlier turns and the method's own answers "
        "(chat template), every turn timed; the results add per-turn figures",
    )


def _add_decoding_options(g) -> None:
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="new tokens per prompt, the same for every method (default: %(default)s)",
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="warm-up prompts through every method, not counted (default: %(default)s)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 (default) is greedy; output identity with ar is checked only when greedy",
    )
    g.add_argument("--top-k", type=int, default=0, help="top-k when sampling (0: off)")
    g.add_argument("--top-p", type=float, default=1.0, help="top-p when sampling (1: off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (prompt i uses seed + i)")
    g.add_argument(
        "--coupling",
        choices=["residual", "gumbel"],
        default="residual",
        help="how sampling draws: residual (default; speculative sampling as in the papers) or gumbel "
        "(the seed-keyed Gumbel-max coupling: every method gives ar's text)",
    )
    g.add_argument(
        "--tie-tolerance",
        type=float,
        default=None,
        help="logit gap under which a differing token counts as a floating-point near-tie (default by dtype: 1e-3 float32, 0.05 float16, 0.25 bfloat16)",
    )


def _add_output_options(g) -> None:
    g.add_argument(
        "--out",
        default="bench-results.json",
        metavar="FILE.json",
        help="result file; FILE.md and FILE-*.png go beside it (default: %(default)s)",
    )
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the target's latency curve first if none is cached (see `specdecode calibrate`)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--compare",
        nargs=2,
        metavar=("OLD", "NEW"),
        default=None,
        help="print what changed between two result files, and exit",
    )


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items


def parse_method_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``["pld.draft_len=5", ...]`` -> ``{"pld": {"draft_len": "5"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not eq or not dot or not method.strip() or not key.strip():
            raise SpecDecodeError(
                f"--method-option {item!r} is not of the form METHOD.KEY=VALUE (e.g. pld.draft_len=5)"
            )
        out.setdefault(method.strip(), {})[key.strip()] = value.strip()
    return out


def parse_turns(text: str) -> int | None:
    """``--turns``: "all" -> None (every turn), else a whole number >= 1."""
    value = str(text).strip().lower()
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise SpecDecodeError(f"--turns takes 'all' or a whole number >= 1, got {text!r}")
    return n


def config_from_args(args):
    from specdecode.bench.runner import BenchConfig

    dataset, prompts_file = args.dataset, args.prompts
    if dataset is None and prompts_file is None:
        dataset = "spec-bench"
    n = args.n_per_category
    if n is None and dataset is not None:
        n = 10
    methods = _split(args.methods) or []
    return BenchConfig(
        turns=parse_turns(args.turns),
        methods=methods,
        model=args.model,
        draft=args.draft,
        dataset=dataset,
        prompts_file=prompts_file,
        categories=_split(args.categories),
        n_per_category=n,
        prompt_seed=args.prompt_seed,
        max_new_tokens=args.max_new_tokens,
        warmup=args.warmup,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        coupling=args.coupling,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        out=args.out,
        plots=not args.no_plots,
        method_options=parse_method_options(args.method_option),
        raw=args.raw,
        tie_tolerance=args.tie_tolerance,
        calibration="measure" if args.calibrate else "cached",
        command=shlex.join(["specdecode", *sys.argv[1:]]) if sys.argv else None,
        progress=not args.no_progress,
    )


def _summary_table(result: dict) -> str:
    rows = [("method", "tok/s", "speedup", "accepted", "identical", "peak MB")]
    for m, s in result["summary"].items():
        ident = s.get("identical_to_ar")
        if ident is not None:
            ident = f"{ident}/{s['prompts']}"
            if s.get("differs_from_ar"):
                ident += f" ({s.get('near_ties', 0)} tie)"
        rows.append(
            (
                m,
                f"{s['tokens_per_second']:.1f}" if s.get("tokens_per_second") is not None else "-",
                f"{s['speedup']:.2f}x" if s.get("speedup") is not None else "-",
                f"{s['mean_accepted']:.2f}" if s.get("mean_accepted") is not None else "-",
                ident or "-",
                f"{s['peak_memory_mb']:.0f}" if s.get("peak_memory_mb") is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )
        for r in rows
    )


def run(args) -> int:
    if args.compare:
        from specdecode.bench.report import compare_text, load_result

        old, new = (load_result(p) for p in args.compare)
        print(compare_text(old, new, args.compare[0], args.compare[1]))
        return 0

    from specdecode.bench.runner import run_bench
    from specdecode.cli import Terminated, terminate_as_interrupt

    config = config_from_args(args)
    set_threads(args.threads)
    with terminate_as_interrupt() as term:  # SIGTERM saves the partial run as Ctrl-C does
        outcome = run_bench(config)
    print(_summary_table(outcome.result))
    if outcome.files:
        print("wrote " + ", ".join(str(f) for f in outcome.files))
    if outcome.interrupted:
        how = Terminated.message if term.received else "interrupted"
        print(f"{how}: the files hold the prompts finished before the stop", file=sys.stderr)
        return Terminated.exit_status if term.received else 130
    return 0
