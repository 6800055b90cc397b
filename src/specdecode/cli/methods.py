"""``specdecode methods``: the registered methods, one line each (with --verbose, their options)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "methods",
        help="list the decoding methods",
        description="List the registered decoding methods. Pass options to a method with "
        "`specdecode generate --method NAME --option KEY=VALUE`.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also list each method's options")
    p.add_argument(
        "--strategies",
        action="store_true",
        help="list the strategies instead (specdecode generate --strategy NAME), whose output "
        "differs from plain decoding by design",
    )
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from specdecode.registry import list_methods

    if args.strategies:
        from specdecode.strategies import list_strategies

        methods = list_strategies()
    else:
        methods = list_methods()
    width = max(len(m.name) for m in methods)
    for m in methods:
        extra = " [needs --draft]" if m.needs_draft else ""
        print(f"{m.name:<{width}}  {m.summary}{extra}")
        if args.verbose:
            for key, opt in m.options.items():
                print(f"{'':<{width}}    {key}={opt.default!r}: {opt.help}")
    return 0
