"""The target's cost model: forward latency t(n, L) when scoring n tokens at once after L
cached tokens.

Adaptive drafters size their drafts from it, so that one rule chooses well where t(n) grows
with n (a CPU) and where it stays flat over small n (a GPU), and where a long context makes
every scored token dearer (attention reads the whole cache for each). :func:`calibrate`
measures the curve once at a few context lengths; :func:`load_or_calibrate` keeps it per
model, device, dtype and torch thread count in
``cache_dir()/calibration/{model_key}-{device}-{dtype}-t{threads}.json``: a curve measured with
one thread says little about two.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specdecode.errors import SpecDecodeError
from specdecode.files import write_atomic
from specdecode.machine import device_name, synchronize

DEFAULT_NS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# Context lengths calibrated by default (those that fit the model): a short prompt, a long one
# and a long conversation; beyond the last, the growth between the last two is extrapolated.
DEFAULT_CONTEXTS = (32, 512, 1024)
FORMAT = "specdecode-latency-curve"
FORMAT_VERSION = 2  # 2: thread count and contexts x ns grid; 1 (one context, no threads) still reads


def _check_timings(row: list[float], what: str) -> None:
    if any(
        isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in row
    ):
        raise ValueError(f"{what} must be finite and positive")


def _cummax(row: list[float]) -> list[float]:
    out, top = [], 0.0
    for s in row:
        top = max(top, float(s))
        out.append(top)
    return out


def _isotonic(row: list[float]) -> list[float]:
    """The non-decreasing sequence nearest ``row`` in squared error (pool adjacent violators):
    a timing that noise pushed above its right neighbours is averaged with them, not spread
    over them as a running maximum would."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for s in row:
        blocks.append([float(s), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out: list[float] = []
    for total, count in blocks:
        out += [total / count] * int(count)
    return out


@dataclass
class LatencyCurve:
    """Median seconds of one target forward scoring ``ns[i]`` tokens after a cached context.

    ``seconds``: at ``context_len`` cached tokens. ``contexts``/``grid``, when measured:
    ``grid[j][i]`` is the forward over ``ns[i]`` tokens after ``contexts[j]`` cached tokens
    (``contexts[0] == context_len``, ``grid[0] == seconds``). The timings are kept monotone, in
    n (isotonic regression of each row: noise can leave the medians out of order) and in the
    context (the elementwise maximum with the row before): scoring more tokens, or after more,
    never costs less. ``threads``: torch's
    CPU thread count during the measurement (0: not recorded, a version-1 file).
    """

    ns: list[int]
    seconds: list[float]
    device: str
    dtype: str
    model_key: str
    context_len: int = 0
    device_name: str = ""  # the CPU or GPU model it was measured on
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    threads: int = 0
    contexts: list[int] = field(default_factory=list)
    grid: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ns or len(self.ns) != len(self.seconds):
            raise ValueError("a latency curve needs as many timings as token counts, at least one")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.ns):
            raise ValueError("token counts must be integers >= 1")
        if any(b <= a for a, b in zip(self.ns, self.ns[1:], strict=False)):
            raise ValueError("token counts must be strictly increasing")
        _check_timings(self.seconds, "timings")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError("threads must be an integer >= 0")
        if bool(self.contexts) != bool(self.grid) or len(self.contexts) != len(self.grid):
            raise ValueError("a context grid needs one row of timings per context length")
        if self.contexts:
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in self.contexts):
                raise ValueError("context lengths must be integers >= 0")
            if any(b <= a for a, b in zip(self.contexts, self.contexts[1:], strict=False)):
                raise ValueError("context lengths must be strictly increasing")
            for row in self.grid:
                if not isinstance(row, list) or len(row) != len(self.ns):
                    raise ValueError("every row of the context grid needs one timing per token count")
                _check_timings(row, "grid timings")
            rows = [_isotonic(row) for row in self.grid]
            for j in range(1, len(rows)):  # never cheaper after a longer context
                rows[j] = [max(a, b) for a, b in zip(rows[j - 1], rows[j], strict=True)]
            self.grid = rows
            self.context_len = self.contexts[0]
            self.seconds = list(rows[0])
        else:
            self.seconds = _isotonic(self.seconds)
        self._rows: dict[int, list[float]] = {}

    def _row(self, context: float | None) -> list[float]:
        """The timings over ``ns`` after ``context`` cached tokens: interpolated between the
        measured contexts, the first row below them, and beyond the last the last row plus the
        growth per token between the last two (monotone in n again afterwards)."""
        cs = self.contexts
        if context is None or len(cs) < 2 or context <= cs[0]:
            return self.seconds if context is None or not cs else self.grid[0]
        key = int(context)
        row = self._rows.get(key)
        if row is not None:
            return row
        j = (
            len(cs) - 2
            if context >= cs[-1]
            else next(k for k in range(len(cs) - 1) if cs[k] <= context <= cs[k + 1])
        )
        frac = (context - cs[j]) / (cs[j + 1] - cs[j])
        lo, hi = self.grid[j], self.grid[j + 1]
        row = _cummax([a + max(0.0, b - a) * frac for a, b in zip(lo, hi, strict=True)])
        if len(self._rows) > 4096:
            self._rows.clear()
        self._rows[key] = row
        return row

    def t(self, n: float, context: float | None = None) -> float:
        """Seconds for a forward scoring ``n`` tokens after ``context`` cached tokens (None: the
        calibration's ``context_len``): linear interpolation between the measured points,
        linear extrapolation beyond them (from the two nearest), never below 1% of the first.
        Beyond the largest n, never below what a shorter measured context extrapolates to (the
        last segment's slope can be steeper there), so the cost stays monotone in the context."""
        y = self._t_row(self._row(context), n)
        if n > self.ns[-1] and context is not None and self.contexts:
            for c, row in zip(self.contexts, self.grid, strict=True):
                if c <= context:
                    y = max(y, self._t_row(row, n))
        return y

    def _t_row(self, ss: list[float], n: float) -> float:
        ns = self.ns
        if len(ns) == 1:
            return ss[0]
        if n <= ns[0]:
            i = 0
        elif n >= ns[-1]:
            i = len(ns) - 2
        else:
            i = next(k for k in range(len(ns) - 1) if ns[k] <= n <= ns[k + 1])
        x0, x1, y0, y1 = ns[i], ns[i + 1], ss[i], ss[i + 1]
        y = y0 + (y1 - y0) * (n - x0) / (x1 - x0)
        return max(y, 0.01 * ss[0])

    def relative(self, n: float) -> float:
        """t(n) / t(1): how much more a forward over n tokens costs than one over a single token."""
        return self.t(n) / self.t(1)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **self.to_dict()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LatencyCurve:
        """Parse and validate; raises ValueError for anything that is not a valid curve."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format", FORMAT) != FORMAT:
            raise ValueError("not a latency curve")
        version = d.get("version", FORMAT_VERSION)
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"latency curve format version {version} is not 1 or {FORMAT_VERSION}")
        try:
            extra = dict(d.get("extra") or {})
            # version 1 kept the thread count in extra, when at all
            threads = d["threads"] if version >= 2 else extra.get("threads", 0)
            curve = cls(
                ns=[int(n) if isinstance(n, int) else n for n in d["ns"]],
                seconds=[float(s) for s in d["seconds"]],
                device=str(d["device"]),
                dtype=str(d["dtype"]),
                model_key=str(d["model_key"]),
                context_len=int(d.get("context_len", 0)),
                device_name=str(d.get("device_name", "")),
                created=str(d.get("created", "")),
                extra=extra,
                threads=threads,
                contexts=list(d.get("contexts") or []) if version >= 2 else [],
                grid=[[float(s) for s in row] for row in d.get("grid") or []] if version >= 2 else [],
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"missing or bad field: {e}") from None
        return curve

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


# --------------------------------------------------------------------------- measuring


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def default_ns(max_n: int) -> list[int]:
    if max_n < 1:
        raise SpecDecodeError(f"max n must be >= 1, got {max_n}")
    ns = [n for n in DEFAULT_NS if n <= max_n]
    if ns[-1] != max_n:
        ns.append(max_n)
    return ns


def default_contexts(loaded, max_n: int) -> list[int]:
    """:data:`DEFAULT_CONTEXTS` that fit the model with ``max_n`` scored tokens (at least one)."""
    max_ctx = loaded.max_context
    fits = [c for c in DEFAULT_CONTEXTS if max_ctx is None or c + max_n + 1 <= max_ctx]
    return fits or [max(1, min(DEFAULT_CONTEXTS[0], (max_ctx or 2) - max_n - 1))]


def calibrate(
    loaded,
    max_n: int = 64,
    ns: list[int] | None = None,
    repeats: int = 5,
    context_len: int | None = None,
    *,
    contexts: list[int] | None = None,
    progress=None,
) -> LatencyCurve:
    """Measure the target's forward latency scoring n = 1..max_n tokens after each of
    ``contexts`` cached tokens (default: :func:`default_contexts`; ``context_len`` alone: that
    one), the median of ``repeats``, with one untimed warm-up round first.

    Uses :class:`specdecode.target.Target`: prefill a context once, then for each n time
    ``score(root, DraftTree.chain(n - 1 tokens))`` and crop the cache back. The rounds are
    interleaved (all contexts and n, then all again) so slow drift touches every point alike.
    ``progress(done, total)`` is called after each timed forward, if given.
    """
    import torch

    ns = sorted(set(ns)) if ns else default_ns(max_n)
    if contexts is None:
        contexts = [context_len] if context_len is not None else default_contexts(loaded, ns[-1])
    contexts = sorted(set(contexts))
    _check_calibration(loaded, ns, repeats, contexts)
    filler = _filler_ids(loaded, contexts[-1] + ns[-1])
    timers = [_ForwardTimer(loaded, filler[: c + ns[-1]], c) for c in contexts]
    for timer in timers:  # warm-up: first-call allocations and kernel selection
        for n in ns:
            timer.seconds(n)
    times = [{n: [] for n in ns} for _ in contexts]
    total, done = len(ns) * len(contexts) * repeats, 0
    for _ in range(repeats):
        for j, timer in enumerate(timers):
            for n in ns:
                times[j][n].append(timer.seconds(n))
                done += 1
                if progress is not None:
                    progress(done, total)
    medians = [[statistics.median(times[j][n]) for n in ns] for j in range(len(contexts))]
    return LatencyCurve(
        ns=list(ns),
        seconds=list(medians[0]),
        device=device_label(loaded.device),
        dtype=dtype_name(loaded.dtype),
        model_key=str(loaded.key),
        context_len=contexts[0],
        device_name=device_name(loaded.device),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        extra={"repeats": repeats, "torch": torch.__version__, "medians": medians},
        threads=torch.get_num_threads(),
        contexts=list(contexts),
        grid=[list(row) for row in medians],
    )


def _check_calibration(loaded, ns: list[int], repeats: int, contexts: list[int]) -> None:
    if ns[0] < 1:
        raise SpecDecodeError(f"token counts must be >= 1, got {ns[0]}")
    if repeats < 1:
        raise SpecDecodeError(f"repeats must be >= 1, got {repeats}")
    if not contexts or contexts[0] < 1:
        raise SpecDecodeError(f"context lengths must be >= 1, got {contexts[0] if contexts else 'none'}")
    max_ctx = loaded.max_context
    if max_ctx is not None and contexts[-1] + ns[-1] + 1 > max_ctx:
        raise SpecDecodeError(
            f"context {contexts[-1]} + {ns[-1]} scored tokens exceeds the model's {max_ctx} positions; "
            "lower the context lengths or --max-n"
        )


def _filler_ids(loaded, n: int) -> list[int]:
    """``n`` token ids drawn with a fixed seed: what they say does not matter to the timing."""
    import torch

    vocab = int(getattr(loaded.model.config, "vocab_size", 0) or len(loaded.tokenizer))
    gen = torch.Generator().manual_seed(0)
    # Ordinary (non-special) ids avoid tokens a model may treat oddly.
    low = min(256, max(vocab // 4, 0))
    return torch.randint(low, vocab, (n,), generator=gen).tolist()


class _ForwardTimer:
    """Times one target forward scoring n tokens after a fixed cached context (the first
    ``context_len`` of ``ids``; the rest are the drafts), cropping the cache back after each."""

    def __init__(self, loaded, ids: list[int], context_len: int) -> None:
        from specdecode.backends import new_target

        context, self.draft = ids[:context_len], ids[context_len:]
        self.device = loaded.device
        self.target = new_target(loaded)  # the model's own backend
        self.target.prefill(context[:-1])
        self.base = self.target.length
        self.root = context[-1]

    def seconds(self, n: int) -> float:
        from specdecode.tree import DraftTree

        tree = DraftTree.chain(self.draft[: n - 1])
        synchronize(self.device)
        start = time.perf_counter()
        self.target.score(self.root, tree)
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.target.commit([])
        self.target.crop(self.base)
        return elapsed


def device_label(device) -> str:
    """``cpu`` or ``cuda`` (the index is not part of a cache key; the device name is checked)."""
    import torch

    return torch.device(device).type


# --------------------------------------------------------------------------- caching


def current_threads() -> int:
    import torch

    return torch.get_num_threads()


def calibration_path(loaded, device=None, dtype=None, threads: int | None = None) -> Path:
    """Where the curve for ``loaded`` (on its device and dtype, or those given) measured with
    ``threads`` torch threads (default: the current count) is cached."""
    from specdecode.models.cache import cache_dir

    dev = device_label(device if device is not None else loaded.device)
    dt = dtype_name(dtype if dtype is not None else loaded.dtype)
    n = current_threads() if threads is None else threads
    return cache_dir() / "calibration" / f"{loaded.key}-{dev}-{dt}-t{n}.json"


def read_cached(loaded, *, max_n: int | None = None, path: Path | None = None) -> LatencyCurve | None:
    """The cached curve for ``loaded`` on its device and dtype at the current thread count, or
    None when there is none or it does not fit (unreadable or incomplete, another
    model/device/dtype/thread count/machine, or shorter than ``max_n``)."""
    path = path or calibration_path(loaded)
    try:
        curve = LatencyCurve.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if (
        curve.model_key != str(loaded.key)
        or curve.device != device_label(loaded.device)
        or curve.dtype != dtype_name(loaded.dtype)
        or curve.threads != current_threads()
    ):
        return None
    if curve.device_name and curve.device_name != device_name(loaded.device):
        return None
    if max_n is not None and curve.ns[-1] < max_n:
        return None
    return curve


def load_or_calibrate(
    loaded,
    device=None,
    dtype=None,
    *,
    max_n: int = 64,
    recalibrate: bool = False,
    repeats: int = 5,
    context_len: int | None = None,
    contexts: list[int] | None = None,
    progress=None,
) -> LatencyCurve:
    """The cached curve for ``loaded`` (on its device and dtype, at the current thread count),
    measuring and caching it when missing, unreadable, made elsewhere or with another thread
    count, or shorter than ``max_n`` (or when ``recalibrate``). The file is written atomically:
    a reader sees the old curve or the new one, never half of one.

    ``device``/``dtype``, if given, must be those ``loaded`` is on: the curve describes a loaded
    model, so load it where you want it measured.
    """
    if device is not None and device_label(device) != device_label(loaded.device):
        raise SpecDecodeError(
            f"the model is loaded on {loaded.device}, not {device}: load it there to calibrate"
        )
    if dtype is not None and dtype_name(dtype) != dtype_name(loaded.dtype):
        raise SpecDecodeError(f"the model is loaded in {dtype_name(loaded.dtype)}, not {dtype_name(dtype)}")
    path = calibration_path(loaded)
    if not recalibrate:
        cached = read_cached(loaded, max_n=max_n, path=path)
        if cached is not None:
            return cached
    curve = calibrate(
        loaded, max_n=max_n, repeats=repeats, context_len=context_len, contexts=contexts, progress=progress
    )
    try:
        write_atomic(path, curve.to_json())
    except OSError as e:  # a read-only cache is no reason to fail: the curve is still good
        curve.extra["cache_error"] = str(e)
    return curve
