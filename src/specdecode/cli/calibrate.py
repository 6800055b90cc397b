"""``specdecode calibrate``: measure the target's forward latency t(n) for n tokens scored at once."""

from __future__ import annotations

import argparse
import sys

from specdecode.cli.common import add_device_arguments, set_threads

DESCRIPTION = """\
Measure how long one forward of the target model takes when it scores n tokens at once
(n = 1, 2, 3, 4, 6, 8, 12, ... up to --max-n) after a cached context of each of a few lengths
(--contexts), on the chosen device, dtype and thread count, and cache the curve per model,
device, dtype and torch thread count (in the specdecode cache folder, calibration/). Tree and
draft-length choices are sized from it, read at the context each step has (interpolated
between the measured lengths, extrapolated beyond the last); `specdecode bench` shows it.

On a CPU t(n) grows with n (t(16) is about 2 t(1) for a 135M model) and with the context; on
a GPU it is flat up to a few dozen tokens. The timings are kept monotone (more tokens, or a
longer context, never cost less). A cached curve is reused unless --recalibrate is given, or
it was made for another model, device, dtype, thread count or machine, or does not reach
--max-n."""

EPILOG = """\
examples:
  specdecode calibrate                          # the default model, best device
  specdecode calibrate --device cpu --max-n 32 --threads 2
  specdecode calibrate --contexts 64,1024,2048
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
    from specdecode.backends import add_backend_argument

    add_backend_argument(p)
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
        "--contexts",
        default=None,
        metavar="L1,L2,...",
        help="tokens in the KV cache before scoring, one curve each (default: 32,512,1024, those "
        "that fit the model; more lengths take longer to measure)",
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
    from specdecode.backends import check_backend

    backend = check_backend(args.backend)
    contexts = _parse_contexts(args.contexts)
    set_threads(args.threads)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, backend=backend)
    path = cost.calibration_path(loaded)
    cached = None if args.recalibrate else cost.read_cached(loaded, max_n=args.max_n, path=path)
    if cached is None:
        print(
            f"measuring {loaded.name} on {loaded.device} ({cost.dtype_name(loaded.dtype)}, "
            f"{cost.current_threads()} threads), n up to {args.max_n}...",
            file=sys.stderr,
        )
        progress = _ProgressBar()
        try:
            curve = cost.load_or_calibrate(
                loaded,
                max_n=args.max_n,
                recalibrate=True,
                repeats=args.repeats,
                contexts=contexts,
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
            f"{loaded.name} on {curve.device} ({curve.device_name}), {curve.dtype}, {curve.threads} threads"
        )
        contexts = curve.contexts or [curve.context_len]
        rows = curve.grid or [curve.seconds]
        print(f"{'n':>5}" + "".join(f"  {f'ms @ {c}':>11}" for c in contexts) + f"  {'t(n)/t(1)':>9}")
        t1 = rows[0][0]
        for i, n in enumerate(curve.ns):
            cells = "".join(f"  {1000 * row[i]:>11.2f}" for row in rows)
            print(f"{n:>5}{cells}  {rows[0][i] / t1:>9.2f}")
        if "cache_error" not in curve.extra:
            print(f"cached in {path}")
    if args.plot:
        from specdecode.bench.plots import plot_latency

        plot_latency(curve.to_dict(), args.plot, title=f"{loaded.name} {curve.device} {curve.dtype}")
        print(f"wrote {args.plot}")
    return 0


def _parse_contexts(text: str | None) -> list[int] | None:
    from specdecode.errors import SpecDecodeError

    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SpecDecodeError(f"--contexts takes context lengths >= 1 separated by commas, got {text!r}")
    return sorted(set(values))


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
