"""``specdecode train METHOD``: train draft heads (medusa, hydra, clover) or kangaroo's adapter for a
target model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specdecode.cli.common import add_device_arguments, set_threads

DESCRIPTION = """\
Train the small modules a self-drafting method needs on top of the target model: Medusa,
Hydra or Clover draft heads on its last hidden state, or Kangaroo's adapter (one attention
block) on the hidden state after its first --exit-layer layers. The target writes its own training
text (self-distillation): it answers prompts with greedy decoding (by default 64 everyday
instructions built into specdecode, not the benchmark's prompts; --data gives your own, one
per line), and at every position of its answers its own next-token distribution is the
label. So the heads learn to predict what this model will say, which is what speculative
decoding needs.

The result is a safetensors file plus a JSON beside it saying what it was trained on (the
model's digest, the data, the settings, the steps, the final losses and how often each head's
(or the adapter's) top token agrees with the target's on held-out answers). By default it goes where the method
looks for it: the specdecode cache folder, heads/<model digest>/<method>.safetensors; a file
given with --out is used with `--option heads=PATH`. Heads trained for another model are
refused at generation time.

A checkpoint is written beside the output every --save-every steps; running the same command
again after an interruption resumes from it. The generated training text is kept beside the
output too, so a second run with other step counts skips the generation."""

EPILOG = """\
examples:
  specdecode train medusa                                # default model, default location
  specdecode generate --method medusa "Explain KV caching."
  specdecode train hydra --steps 800 --threads 2
  specdecode train kangaroo --exit-layer 2             # then: --method kangaroo
  specdecode train medusa --model path/to/model --data prompts.txt --out heads/medusa.safetensors
  specdecode generate --model path/to/model --method medusa --option heads=heads/medusa.safetensors "Hi\""""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train draft heads (medusa, hydra, clover) or kangaroo's adapter by self-distillation",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("method", help="what to train: medusa, hydra, clover or kangaroo")
    p.add_argument("--model", default=None, help="target model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="prompts the target answers to make its training text, one per line "
        "(default: specdecode's built-in prompts)",
    )
    p.add_argument("--steps", type=int, default=600, help="optimizer steps (default: %(default)s)")
    p.add_argument(
        "--heads", type=int, default=4, help="number of heads, i.e. deepest draft (default: %(default)s)"
    )
    p.add_argument(
        "--exit-layer",
        type=int,
        default=2,
        help="kangaroo: the target layers below the adapter (default: %(default)s)",
    )
    p.add_argument("--batch", type=int, default=None, help="positions per step (default: 64; kangaroo: 256)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate, cosine decay (default: 3e-3; kangaroo: 2e-3)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=160,
        help="length of each answer the target writes for its training text (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the batches and the initialization")
    p.add_argument(
        "--save-every",
        type=int,
        default=50,
        help="steps between resumable checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="where to write the heads (.safetensors; the JSON goes beside it). Default: the "
        "cache folder's heads/<model digest>/<method>.safetensors, where generation looks",
    )
    add_device_arguments(p, threads_help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from specdecode.errors import SpecDecodeError
    from specdecode.models.loader import load_model
    from specdecode.training.heads import METHODS, default_heads_path
    from specdecode.training.kangaroo import KangarooSettings, train_adapter
    from specdecode.training.train import TrainSettings, read_prompts, train_heads

    trainable = (*METHODS, "kangaroo")
    if args.method not in trainable:
        raise SpecDecodeError(f"cannot train {args.method!r}: trainable methods are {', '.join(trainable)}")
    common = {
        "steps": args.steps,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "save_every": args.save_every,
    }
    common |= {k: v for k, v in (("batch", args.batch), ("lr", args.lr)) if v is not None}
    if args.method == "kangaroo":
        settings = KangarooSettings(exit_layer=args.exit_layer, **common)
        train = train_adapter
    else:
        settings = TrainSettings(args.method, num_heads=args.heads, **common)
        train = train_heads
    settings.check()
    prompts = read_prompts(Path(args.data)) if args.data else None
    set_threads(args.threads)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    out = Path(args.out).expanduser() if args.out else default_heads_path(loaded, args.method)
    if out.suffix != ".safetensors":
        raise SpecDecodeError(f"--out must name a .safetensors file, got {out}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecDecodeError(f"cannot create the folder for --out {out}: {e}") from None
    source = f"prompts from {args.data}" if args.data else "built-in prompts (specdecode.training.prompts)"

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    result = train(
        loaded, settings, out, prompts=prompts, data_source=source, progress=not args.quiet, log=log
    )
    info = result.info
    if args.method == "kangaroo":
        summary = {
            "adapter": str(result.path),
            "exit_layer": info["exit_layer"],
            "steps": info["steps"],
            "final_loss": round(info["final_loss"], 4),
            "eval_top1_agreement": round(info["eval_top1_agreement"], 4),
            "seconds": info["seconds"],
        }
    else:
        summary = {
            "heads": str(result.path),
            "steps": info["steps"],
            "final_losses": [round(x, 4) for x in info["final_losses"]],
            "eval_top1_agreement": [round(x, 4) for x in info["eval_top1_agreement"]],
            "seconds": info["seconds"],
        }
    print(json.dumps(summary, indent=2))
    return 0
