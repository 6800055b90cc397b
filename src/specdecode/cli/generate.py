"""``specdecode generate PROMPT``: stream a reply to the terminal (or print one JSON object)."""

from __future__ import annotations

import argparse
import json
import sys

from specdecode.errors import SpecDecodeError

EPILOG = """\
examples:
  specdecode generate "Write a haiku about the sea."
  specdecode generate --method pld "Repeat after me: the quick brown fox."
  specdecode generate --method draft-model --draft default "Hello"
  specdecode generate --temperature 0.8 --top-p 0.95 --seed 1 "Tell me a story."
  specdecode generate --raw --stop "\\n\\n" "def fibonacci(n):"
  specdecode generate --json --max-new-tokens 32 - < prompt.txt

--json prints one object: text, token_ids (new tokens only), new_tokens, seconds,
tokens_per_second, method, steps, mean_accepted (tokens per target forward, bonus included),
finish_reason, prompt_tokens."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate a reply to a prompt",
        description="Generate text with a decoding method. Greedy by default: every method then "
        "gives exactly the text plain decoding gives, only faster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    p.add_argument(
        "--model",
        default=None,
        help="HF folder, .gguf file, cached hub id or 'default' (the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--method", default="ar", help="decoding method (default: ar; see `specdecode methods`)")
    p.add_argument(
        "--draft", default=None, help="draft model for draft-model methods ('default' = the embedded model)"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option (repeatable; see `specdecode methods -v`)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=256, help="at most this many new tokens (default: %(default)s)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop when this text appears (repeatable)"
    )
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (CUDA default), float16")
    p.add_argument("--raw", action="store_true", help="send the prompt as it is, without the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.set_defaults(func=run)
    return p


def _check(args) -> None:
    """Argument errors before any model is loaded."""
    if args.max_new_tokens <= 0:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise SpecDecodeError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise SpecDecodeError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise SpecDecodeError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if not args.prompt.strip():
        raise SpecDecodeError("the prompt is empty: give some text (or - to read stdin)")


def run(args) -> int:
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    _check(args)
    from specdecode.registry import get_method, parse_option_strings

    spec = get_method(args.method)  # unknown method: an error before loading anything
    options = spec.parse_options(parse_option_strings(args.option))
    if spec.needs_draft and not args.draft:
        raise SpecDecodeError(
            f"method {args.method!r} needs a draft model: pass --draft MODEL (or --draft default)"
        )

    from specdecode import api

    kwargs = dict(
        model=args.model, method=args.method, draft=args.draft, options=options,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, stop=args.stop or None, raw=args.raw,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    if args.json:
        result = api.generate(args.prompt, **kwargs)
        out = result.to_dict()
        out.pop("accepted_lengths")
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for piece in api.stream(args.prompt, **kwargs):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
