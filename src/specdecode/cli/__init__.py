"""``specdecode <command>``: a thin dispatcher; each subcommand is a module with its own parser.

Every module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. A
:class:`SpecDecodeError` becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from specdecode import __version__
from specdecode.errors import SpecDecodeError

COMMANDS = ["generate", "methods", "bench", "calibrate"]

DESCRIPTION = """\
Fast, lossless decoding for Hugging Face causal language models.

Speculative methods guess several tokens and let the model check them in one forward pass;
under greedy decoding the output is token for token what the model says alone, under
sampling it has the same distribution. With no --model, the embedded SmolLM2-135M-Instruct
is used (no network needed)."""

EPILOG = """\
examples:
  specdecode generate "Write a haiku about the sea."
  specdecode generate --method pld --json "Summarize: ..."
  echo "Explain KV caches." | specdecode generate -
  specdecode methods
  specdecode bench --dataset spec-bench --n-per-category 10 --out results.json

`specdecode COMMAND --help` tells more about each command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdecode",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"specdecode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"specdecode.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpecDecodeError as e:
        print(f"specdecode: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specdecode: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
