"""``specdecode <command>``: a thin dispatcher; each subcommand is a module with its own parser.

Every module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. The exceptions a
user can cause are handled here, in one place:

- :class:`SpecDecodeError` (bad input or environment): one line on stderr, exit status 2;
- Ctrl-C (``KeyboardInterrupt``): one line, exit status 130; a SIGTERM that a command turned
  into :class:`Terminated`: one line, exit status 143 (128 + the signal number, as a shell
  reports a process killed by it);
- a closed stdout (``specdecode generate ... | head -c 5``): no message at all, exit status 141
  (128 + SIGPIPE, what a program killed by the broken pipe gives).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import select
import signal
import sys

from specdecode import __version__
from specdecode.errors import SpecDecodeError

COMMANDS = ["generate", "methods", "models", "bench", "calibrate", "serve", "audit", "train"]

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
  specdecode generate --model qwen2.5-coder-0.5b "Write a binary search in Python."
  specdecode bench --dataset spec-bench --n-per-category 10 --out results.json

`specdecode COMMAND --help` tells more about each command."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by a SIGTERM handler (see ``terminate_as_interrupt``): a
    ``KeyboardInterrupt``, so code that saves partial work on Ctrl-C does so on SIGTERM too."""

    exit_status = 128 + signal.SIGTERM
    message = "terminated (SIGTERM)"


class terminate_as_interrupt:
    """Within ``with``: a SIGTERM raises :class:`Terminated` in the main thread (only the first:
    a second SIGTERM while the partial work is being saved is ignored). The old handler comes
    back on exit. Off the main thread, where Python cannot set handlers, it does nothing."""

    def __init__(self) -> None:
        self.received = False
        self._old = None

    def _handler(self, signum, frame) -> None:
        if self.received:
            return
        self.received = True
        raise Terminated

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports an error)."""
    try:
        fd = sys.stdout.fileno()
        p = select.poll()
        p.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # no real descriptor to ask: trust the EPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again (which
    would print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except SpecDecodeError as e:
        print(f"specdecode: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"specdecode: {getattr(e, 'message', 'interrupted')}", file=sys.stderr)
        return getattr(e, "exit_status", 130)
    except BrokenPipeError as e:
        if e.errno != errno.EPIPE or not _stdout_closed():
            raise
        _silence_stdout()
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
