"""``specdecode generate --strategy NAME``: the strategy flags of ``generate`` and their run."""

from __future__ import annotations

import json
import sys

from specdecode.errors import SpecDecodeError

# flag (argparse dest) -> (strategy, option name)
FLAGS = {
    "num_beams": ("diverse-beam", "num_beams"),
    "num_beam_groups": ("diverse-beam", "num_beam_groups"),
    "diversity_penalty": ("diverse-beam", "diversity_penalty"),
    "num_drafts": ("superposed", "num_drafts"),
    "entropy_threshold": ("entropy-adaptive", "threshold"),
}

HELP = """\
strategies (--strategy NAME): decoding that changes the output by design, not ar's text:
  diverse-beam      beam groups kept apart by a diversity penalty; prints the best beam and
                    then the others (--num-beams, --num-beam-groups, --diversity-penalty)
  superposed        k drafts from one pass over superposed embeddings (--num-drafts)
  exact-extract     the answer is a span copied verbatim from --extract-from FILE (or -),
                    the prompt being the question; prints the span and its log-prob
  entropy-adaptive  --draft (small) writes while its entropy is under --entropy-threshold
                    nats, --model (large) otherwise; prints the share the large model wrote
examples:
  specdecode generate --strategy diverse-beam --num-beams 6 --num-beam-groups 3 "Give a title for a poem."
  specdecode generate --strategy superposed --num-drafts 3 --max-new-tokens 24 "The capital of France"
  specdecode generate --strategy exact-extract --extract-from article.txt "Who founded the company?"
  specdecode generate --strategy entropy-adaptive --model qwen2.5-coder-0.5b --draft default "Write fizzbuzz."
"""


def add_arguments(parser) -> None:
    g = parser.add_argument_group("strategies (lossy by design; see below)")
    g.add_argument(
        "--strategy",
        default=None,
        choices=["diverse-beam", "superposed", "exact-extract", "entropy-adaptive"],
        help="decode with this strategy instead of a method: its output differs from ar's on purpose",
    )
    g.add_argument("--num-beams", type=int, default=None, help="diverse-beam: beams in all (default 4)")
    g.add_argument(
        "--num-beam-groups", type=int, default=None, help="diverse-beam: groups of beams (default 2)"
    )
    g.add_argument(
        "--diversity-penalty",
        type=float,
        default=None,
        help="diverse-beam: subtracted from a token's log-prob per beam of an earlier group that "
        "chose it this step (default 1.0; 0 = plain beam search)",
    )
    g.add_argument("--num-drafts", type=int, default=None, help="superposed: drafts k (default 3)")
    g.add_argument(
        "--extract-from",
        default=None,
        metavar="FILE|-",
        help="exact-extract: the context the answer is copied from (a UTF-8 file, or - for stdin)",
    )
    g.add_argument(
        "--entropy-threshold",
        type=float,
        default=None,
        help="entropy-adaptive: small-model entropy (nats) above which the large model writes (default 1.0)",
    )


def wanted(args) -> bool:
    return (
        args.strategy is not None
        or args.extract_from is not None
        or any(getattr(args, f) is not None for f in FLAGS)
    )


def _read_context(source: str) -> str:
    from specdecode.cli.generate import check_text, read_stdin_prompt

    if source == "-":
        return read_stdin_prompt()
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SpecDecodeError(f"--extract-from {source}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecDecodeError(
            f"--extract-from {source} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None
    check_text(text, f"--extract-from {source}")
    return text


def options_from_args(args) -> tuple[str, dict]:
    """The strategy and its options from the flags; one clear error for a flag of another one."""
    from specdecode.registry import parse_option_strings
    from specdecode.strategies import get_strategy

    strategy = args.strategy or ("exact-extract" if args.extract_from is not None else None)
    if strategy is None:
        flag = next(f for f in FLAGS if getattr(args, f) is not None)
        raise SpecDecodeError(
            f"--{flag.replace('_', '-')} belongs to --strategy {FLAGS[flag][0]}: add --strategy {FLAGS[flag][0]}"
        )
    if args.method != "ar":
        raise SpecDecodeError(
            "--method and --strategy exclude each other: a strategy is not a speculative method"
        )
    for f, (owner, _) in FLAGS.items():
        if getattr(args, f) is not None and owner != strategy:
            raise SpecDecodeError(f"--{f.replace('_', '-')} is an option of {owner}, not of {strategy}")
    if args.extract_from is not None and strategy != "exact-extract":
        raise SpecDecodeError(f"--extract-from is for exact-extract, not {strategy}")
    if args.temperature != 0 or args.top_k or args.top_p != 1.0 or args.seed is not None or args.stop:
        raise SpecDecodeError(
            f"{strategy} decodes greedily: --temperature, --top-k, --top-p, --seed and --stop do not apply"
        )
    given = parse_option_strings(args.option)
    given.update({opt: getattr(args, f) for f, (owner, opt) in FLAGS.items() if getattr(args, f) is not None})
    spec = get_strategy(strategy)
    options = spec.parse_options(given)
    if strategy == "diverse-beam" and options["num_beams"] % options["num_beam_groups"]:
        raise SpecDecodeError(
            f"--num-beams ({options['num_beams']}) must be a multiple of --num-beam-groups "
            f"({options['num_beam_groups']})"
        )
    return strategy, options


def run(args) -> int:
    """``specdecode generate`` with a strategy (the prompt already read and checked)."""
    from specdecode.models.pairing import check_draft
    from specdecode.strategies import get_strategy
    from specdecode.strategies.run import run_strategy

    strategy, options = options_from_args(args)
    check_draft(get_strategy(strategy), args.draft)
    context = None
    if strategy == "exact-extract" and args.extract_from is not None:
        if args.extract_from == "-" and args.prompt_from_stdin:
            raise SpecDecodeError("the prompt and --extract-from cannot both come from stdin")
        context = _read_context(args.extract_from)
    result = run_strategy(
        args.prompt, strategy, model=args.model, draft=args.draft, options=options,
        max_new_tokens=args.max_new_tokens, context=context, raw=args.raw, device=args.device,
        dtype=args.dtype,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    print(result.text)
    note = f"[{strategy}] {result.new_tokens} tokens in {result.seconds:.2f} s"
    if result.score is not None:
        note += f", score {result.score:.3f}"
    if strategy == "entropy-adaptive":
        s = result.stats
        note += f", {s['large_tokens']}/{s['large_tokens'] + s['small_tokens']} tokens from the large model"
    print(note, file=sys.stderr)
    for i, c in enumerate(result.candidates[1:], start=2):
        kind = "beam" if strategy == "diverse-beam" else "draft"
        print(f"--- {kind} {i} (score {c.score:.3f}) ---")
        print(c.text)
    return 0
