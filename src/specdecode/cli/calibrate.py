"""``specdecode calibrate``: measure the target's forward latency t(n) for n tokens scored at once."""

from __future__ import annotations

import argparse
import sys

from specdecode.cli.common import add_device_arguments, set_threads

DESCRIPTION = """\
Measure how long one forward of the target model takes when it scores n tokens at once
(n = 1, 2, 3, 4, 6, 8, 12, ... up to --max-n) after a cached context, on the chosen device and
dtype, and cache the curve per model, device and dtype (in the specdecode cache folder,
calibration/). Tree and draft-length choices are sized from it; `specdecode bench` shows it.

On a CPU t(n) grows with n (t(16) is about 2 t(1) for a 135M model); on a GPU it is flat up
to a few dozen tokens. A cached curve is reused unless --recalibrate is given, or it was made
for another model, device, dtype or machine, or does not reach --max-n."""

EPILOG = """\
examples:
  specdecode calibrate                          # the default model, best device
  specdecode calibrate --device cpu --max-n 32
  specdecode calibrate --model path/to/model --device cuda --dtype bfloat16 --recalibrate
  specdecode calibrate --json > curve.json"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate",
        help="measure and cache the target's forward latency for 1..N tokens scored at once",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, help="target model (default: the embedded SmolLM2-135M-Instruct)")
    add_device_arguments(p, threads_help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--max-n", type=int, default=64, help="largest number of tokens scored at once (default: %(default)s)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed forwards per n; the median is kept (default: %(default)s)",
    )
    p.add_argument(
        "--context-len",
        type=int,
        default=128,
        help="tokens in the KV cache before scoring (default: %(default)s)",
    )
    p.add_argument("--recalibrate", action="store_true", help="measure again even if a cached curve fits")
    p.add_argument("--json", action="store_true", help="print the curve as JSON instead of a table")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the curve to this PNG")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from specdecode import cost
    from specdecode.errors import SpecDecodeError
    from specdecode.models.loader import load_model

    if args.max_n < 1:
        raise SpecDecodeError(f"--max-n must be >= 1, got {args.max_n}")
    if args.repeats < 1:
        raise SpecDecodeError(f"--repeats must be >= 1, got {args.repeats}")
    set_threads(args.threads)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    path = cost.calibration_path(loaded)
    cached = None if args.recalibrate else cost.read_cached(loaded, max_n=args.max_n, path=path)
    if cached is None:
        print(
            f"measuring {loaded.name} on {loaded.device} ({cost.dtype_name(loaded.dtype)}), n up to {args.max_n}...",
            file=sys.stderr,
        )
        progress = _ProgressBar()
        try:
            curve = cost.load_or_calibrate(
                loaded,
                max_n=args.max_n,
                recalibrate=True,
                repeats=args.repeats,
                context_len=args.context_len,
                progress=progress,
            )
        finally:
            progress.close()
    else:
        curve = cached
        print(f"using the cached curve {path} (--recalibrate to measure again)", file=sys.stderr)
    if args.json:
        print(curve.to_json())
    else:
        print(
            f"{loaded.name} on {curve.device} ({curve.device_name}), {curve.dtype}, context {curve.context_len}"
        )
        print(f"{'n':>5}  {'ms':>9}  {'t(n)/t(1)':>9}  {'ms/token':>9}")
        t1 = curve.t(1)
        for n, s in zip(curve.ns, curve.seconds, strict=False):
            print(f"{n:>5}  {1000 * s:>9.2f}  {s / t1:>9.2f}  {1000 * s / n:>9.3f}")
        if "cache_error" not in curve.extra:
            print(f"cached in {path}")
    if args.plot:
        from specdecode.bench.plots import plot_latency

        plot_latency(curve.to_dict(), args.plot, title=f"{loaded.name} {curve.device} {curve.dtype}")
        print(f"wrote {args.plot}")
    return 0


class _ProgressBar:
    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = None
        self._tqdm = tqdm

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self._tqdm(total=total, desc="calibrate", unit="fwd")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
