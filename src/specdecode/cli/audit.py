"""``specdecode audit``: run this project's losslessness checks on your own model."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict

from specdecode.cli.common import add_device_arguments, set_threads
from specdecode.errors import SpecDecodeError

DESCRIPTION = """\
Check that a decoding method gives what your model gives alone, with the two checks this
project runs on its own methods:

1. greedy identity: each prompt decoded greedily by ar and by the method; an output is
   identical, a near-tie (it first differs where the model's two choices are within
   --tie-tolerance in the logits: floating-point noise, as the benchmark classes it) or
   different (a real error);
2. sampling distribution: the method samples the first --tokens new tokens of the shortest
   prompt --samples times (one seed each; speculation acts from new token 2 on). Two
   chi-square tests compare the samples with the model's exact distribution, computed by plain
   forwards: the joint of the first 3 tokens on a partition of the outcomes (likely prefixes
   expanded, the rest pooled), and every token's probability integral transform given its
   sample's prefix, uniform for a lossless method. The check fails when the smaller p-value,
   doubled, is below --alpha.

A method passes when no greedy output really differs and the p-value is at least --alpha.
Exit status: 0 when every method passes, 1 when one fails, 2 on bad input."""

EPILOG = """\
examples:
  specdecode audit --method pld
  specdecode audit --method draft-model --draft default --samples 400
  specdecode audit --method all --draft default --prompts 3 --samples 200 --json
  specdecode audit --model path/to/model --method hybrid --prompt-file my.jsonl

--option KEY=VALUE sets an option of the method (with several methods: METHOD.KEY=VALUE).
Prompt files (JSONL): one object a line with "prompt" (or "turns"), as for `specdecode bench`."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "audit",
        help="check that a method is lossless on your model (greedy identity, sampling distribution)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to check")
    g.add_argument(
        "--method",
        required=True,
        help="method name, comma-separated names, or 'all' (see `specdecode methods`)",
    )
    g.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a method option (repeatable)"
    )
    g.add_argument("--model", default=None, help="target model (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument(
        "--draft", default=None, help="draft model for methods that need one ('default' = the embedded model)"
    )
    add_device_arguments(g, threads_help="torch CPU threads (default: torch's choice)")

    g = p.add_argument_group("prompts")
    g.add_argument(
        "--prompts", type=int, default=6, metavar="N", help="prompts for the greedy check (default: 6)"
    )
    g.add_argument(
        "--prompt-file",
        default=None,
        metavar="FILE",
        help="a JSONL prompt file (default: embedded Spec-Bench prompts, one per category in turn)",
    )
    g.add_argument("--raw", action="store_true", help="feed prompts without the chat template")
    g.add_argument(
        "--max-new-tokens", type=int, default=64, help="greedy check: new tokens per prompt (default: 64)"
    )

    g = p.add_argument_group("sampling check")
    g.add_argument(
        "--samples",
        type=int,
        default=200,
        help="samples of the first tokens (default: 200; 0: no sampling check)",
    )
    g.add_argument("--tokens", type=int, default=16, help="new tokens per sample, >= 2 (default: 16)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    g.add_argument("--top-k", type=int, default=0, help="top-k (0: off)")
    g.add_argument("--top-p", type=float, default=1.0, help="top-p (1: off)")
    g.add_argument(
        "--coupling",
        choices=["residual", "gumbel"],
        default="residual",
        help="residual (default): speculative sampling as in the papers; gumbel: the seed-keyed coupling",
    )
    g.add_argument("--seed", type=int, default=0, help="sample i uses seed + 2i (default: 0)")
    g.add_argument("--alpha", type=float, default=1e-3, help="fail below this p-value (default: 0.001)")
    g.add_argument(
        "--tie-tolerance",
        type=float,
        default=None,
        help="logit gap of a near-tie (default by dtype: 1e-3 float32, 0.05 float16, 0.25 bfloat16)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run)
    return p


def _methods(text: str, option_items: list[str], draft) -> list[tuple[str, dict]]:
    """The methods to audit with their parsed options; SpecDecodeError on any bad name or option."""
    from specdecode.models.pairing import check_draft
    from specdecode.registry import get_method, list_methods, parse_option_strings

    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        names = [m.name for m in list_methods() if draft or not m.needs_draft]
        skipped = [m.name for m in list_methods() if m.needs_draft and not draft]
        if skipped:
            print(f"audit: without --draft, leaving out {', '.join(skipped)}", file=sys.stderr)
    if not names:
        raise SpecDecodeError("--method needs a method name (see `specdecode methods`)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecDecodeError(f"method listed twice: {', '.join(dupes)}")
    given: dict[str, dict[str, str]] = {}
    for key, value in parse_option_strings(option_items).items():
        method, dot, name = key.rpartition(".")
        if not dot and len(names) > 1:
            raise SpecDecodeError(f"--option {key}={value}: with several methods, write METHOD.{key}={value}")
        method = method if dot else names[0]
        if method not in names:
            raise SpecDecodeError(f"--option {key}={value} is for {method!r}, which is not audited")
        given.setdefault(method, {})[name] = value
    out = []
    for name in names:
        spec = get_method(name)
        check_draft(spec, draft)
        out.append((name, spec.parse_options(given.get(name))))
    return out


def _prompts(args):
    from specdecode.bench.datasets import load_prompts, read_jsonl, round_robin

    if args.prompts < 1:
        raise SpecDecodeError(f"--prompts must be >= 1, got {args.prompts}")
    raw = read_jsonl(args.prompt_file) if args.prompt_file else load_prompts(dataset="spec-bench")
    return round_robin(raw)[: args.prompts]


def _config(args):
    from specdecode.audit import AuditConfig

    return AuditConfig(
        max_new_tokens=args.max_new_tokens, samples=args.samples, tokens=args.tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, coupling=args.coupling,
        seed=args.seed, alpha=args.alpha, tie_tolerance=args.tie_tolerance,
    )  # fmt: skip


def table(results) -> str:
    """The verdict table: one row per method."""
    head = ("method", "greedy identical", "near-ties", "different", "drafted", "accepted", "p first", "p all")
    rows = [(*head, "verdict")]
    for r in results:
        s = r.sampling
        rows.append(
            (
                r.method,
                f"{r.count('identical')}/{len(r.greedy)}",
                str(r.count("near-tie")),
                str(r.count("different")),
                f"{s.drafted:.2f}" if s else "-",
                f"{s.accepted:.2f}" if s else "-",
                f"{s.joint_pvalue:.3g}" if s else "-",
                f"{s.pit_pvalue:.3g}" if s else "-",
                r.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _buildable(methods: list[tuple[str, dict]], target, draft, log) -> list[tuple[str, dict]]:
    """With ``--method all``: the methods that can run on this model as it is; one that cannot
    (heads never trained for it, a backend it needs) is left out with its reason."""
    from specdecode.engine import build_decoder
    from specdecode.registry import get_method

    kept = []
    for name, options in methods:
        try:
            build_decoder(
                name, target, draft=draft if get_method(name).needs_draft else None, options=options
            )
        except SpecDecodeError as e:
            log(f"leaving out {name}: {e}")
            continue
        kept.append((name, options))
    return kept


def run(args) -> int:
    cfg = _config(args)  # bad settings: exit status 2 before anything loads
    methods = _methods(args.method, args.option, args.draft)
    prompts = _prompts(args)
    set_threads(args.threads)
    from specdecode.audit import AuditPrompt, audit, sampling_prompt
    from specdecode.models.loader import load_model

    target = load_model(args.model, device=args.device, dtype=args.dtype)
    draft = None
    if any(spec_needs_draft(m) for m, _ in methods):
        draft = load_model(args.draft, device=str(target.device), dtype=args.dtype)
    encoded = [AuditPrompt(p.id, target.encode_prompt(p.text, raw=args.raw)) for p in prompts]

    def log(line: str) -> None:
        print(f"audit: {line}", file=sys.stderr, flush=True)

    if args.method.strip() == "all":
        methods = _buildable(methods, target, draft, log)

    results = audit(target, methods, encoded, cfg, draft=draft, log=log)
    failed = any(r.verdict == "FAIL" for r in results)
    if args.json:
        out = {
            "command": shlex.join(["specdecode", *sys.argv[1:]]) if sys.argv else None,
            "model": target.name,
            "draft": draft.name if draft is not None else None,
            "dtype": str(target.dtype).removeprefix("torch."),
            "device": str(target.device),
            "settings": asdict(cfg),
            "sampling_prompt": sampling_prompt(encoded).id if cfg.samples else None,
            "methods": [r.to_dict() for r in results],
            "verdict": "FAIL" if failed else "PASS",
        }
        print(json.dumps(out, indent=1, default=str))
    else:
        print(table(results))
        if cfg.samples:
            print(
                f"sampling: {cfg.samples} samples of new tokens 1-{cfg.tokens} of prompt "
                f"{sampling_prompt(encoded).id}, {cfg.coupling} coupling; drafted / accepted: draft "
                "tokens scored / accepted per step; p first: the joint of tokens 1-3, p all: every "
                f"token given its prefix; a method fails when the smaller p is below {cfg.alpha / 2:g}"
            )
    return 1 if failed else 0


def spec_needs_draft(name: str) -> bool:
    from specdecode.registry import get_method

    return get_method(name).needs_draft
