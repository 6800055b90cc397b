"""The target's cost model: forward latency t(n) when scoring n tokens at once.

Adaptive drafters size their drafts from it, so that one rule chooses well where t(n) grows
with n (a CPU) and where it stays flat over small n (a GPU). :func:`calibrate` measures the
curve once; :func:`load_or_calibrate` keeps it per model, device and dtype in
``cache_dir()/calibration/{model_key}-{device}-{dtype}.json``.
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
FORMAT = "specdecode-latency-curve"
FORMAT_VERSION = 1


@dataclass
class LatencyCurve:
    """Median seconds of one target forward scoring ``ns[i]`` tokens after a cached context."""

    ns: list[int]
    seconds: list[float]
    device: str
    dtype: str
    model_key: str
    context_len: int = 0
    device_name: str = ""  # the CPU or GPU model it was measured on
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ns or len(self.ns) != len(self.seconds):
            raise ValueError("a latency curve needs as many timings as token counts, at least one")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.ns):
            raise ValueError("token counts must be integers >= 1")
        if any(b <= a for a, b in zip(self.ns, self.ns[1:], strict=False)):
            raise ValueError("token counts must be strictly increasing")
        if any(not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in self.seconds):
            raise ValueError("timings must be finite and positive")

    def t(self, n: float) -> float:
        """Seconds for a forward scoring ``n`` tokens: linear interpolation between the measured
        points, linear extrapolation beyond them (from the two nearest), never below 1% of t(ns[0])."""
        ns, ss = self.ns, self.seconds
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
        return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LatencyCurve:
        """Parse and validate; raises ValueError for anything that is not a valid curve."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format", FORMAT) != FORMAT:
            raise ValueError("not a latency curve")
        if d.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"latency curve format version {d.get('version')} is not {FORMAT_VERSION}")
        try:
            curve = cls(
                ns=[int(n) if isinstance(n, int) else n for n in d["ns"]],
                seconds=[float(s) for s in d["seconds"]],
                device=str(d["device"]),
                dtype=str(d["dtype"]),
                model_key=str(d["model_key"]),
                context_len=int(d.get("context_len", 0)),
                device_name=str(d.get("device_name", "")),
                created=str(d.get("created", "")),
                extra=dict(d.get("extra") or {}),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"missing or bad field: {e}") from None
        return curve

    def to_dict(self) -> dict:
        return asdict(self)


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


def calibrate(
    loaded,
    max_n: int = 64,
    ns: list[int] | None = None,
    repeats: int = 5,
    context_len: int = 128,
    *,
    progress=None,
) -> LatencyCurve:
    """Measure the target's forward latency scoring n = 1..max_n tokens after ``context_len``
    cached tokens (median of ``repeats``, with one untimed warm-up round first).

    Uses :class:`specdecode.target.Target`: prefill a context once, then for each n time
    ``score(root, DraftTree.chain(n - 1 tokens))`` and crop the cache back. The rounds are
    interleaved (all n, then all n again) so slow drift touches every point alike.
    ``progress(done, total)`` is called after each timed forward, if given.
    """
    import torch

    ns = sorted(set(ns)) if ns else default_ns(max_n)
    _check_calibration(loaded, ns, repeats, context_len)
    timer = _ForwardTimer(loaded, _filler_ids(loaded, context_len + ns[-1]), context_len)
    for n in ns:  # warm-up: first-call allocations and kernel selection
        timer.seconds(n)
    times: dict[int, list[float]] = {n: [] for n in ns}
    total, done = len(ns) * repeats, 0
    for _ in range(repeats):
        for n in ns:
            times[n].append(timer.seconds(n))
            done += 1
            if progress is not None:
                progress(done, total)
    return LatencyCurve(
        ns=list(ns),
        seconds=[statistics.median(times[n]) for n in ns],
        device=device_label(loaded.device),
        dtype=dtype_name(loaded.dtype),
        model_key=str(loaded.key),
        context_len=context_len,
        device_name=device_name(loaded.device),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        extra={"repeats": repeats, "torch": torch.__version__, "threads": torch.get_num_threads()},
    )


def _check_calibration(loaded, ns: list[int], repeats: int, context_len: int) -> None:
    if ns[0] < 1:
        raise SpecDecodeError(f"token counts must be >= 1, got {ns[0]}")
    if repeats < 1:
        raise SpecDecodeError(f"repeats must be >= 1, got {repeats}")
    if context_len < 1:
        raise SpecDecodeError(f"context length must be >= 1, got {context_len}")
    max_ctx = loaded.max_context
    if max_ctx is not None and context_len + ns[-1] + 1 > max_ctx:
        raise SpecDecodeError(
            f"context {context_len} + {ns[-1]} scored tokens exceeds the model's {max_ctx} positions; "
            "lower --context-len or --max-n"
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
        from specdecode.target import Target

        context, self.draft = ids[:context_len], ids[context_len:]
        self.device = loaded.device
        self.target = Target(loaded)
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


def calibration_path(loaded, device=None, dtype=None) -> Path:
    from specdecode.models.cache import cache_dir

    dev = device_label(device if device is not None else loaded.device)
    dt = dtype_name(dtype if dtype is not None else loaded.dtype)
    return cache_dir() / "calibration" / f"{loaded.key}-{dev}-{dt}.json"


def read_cached(loaded, *, max_n: int | None = None, path: Path | None = None) -> LatencyCurve | None:
    """The cached curve for ``loaded`` on its device and dtype, or None when there is none or it
    does not fit (corrupt, another model/device/dtype/machine, or shorter than ``max_n``)."""
    path = path or calibration_path(loaded)
    try:
        curve = LatencyCurve.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if (
        curve.model_key != str(loaded.key)
        or curve.device != device_label(loaded.device)
        or curve.dtype != dtype_name(loaded.dtype)
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
    context_len: int = 128,
    progress=None,
) -> LatencyCurve:
    """The cached curve for ``loaded`` (on its device and dtype), measuring and caching it when
    missing, unreadable, made elsewhere, or shorter than ``max_n`` (or when ``recalibrate``).

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
    curve = calibrate(loaded, max_n=max_n, repeats=repeats, context_len=context_len, progress=progress)
    try:
        write_atomic(path, curve.to_json())
    except OSError as e:  # a read-only cache is no reason to fail: the curve is still good
        curve.extra["cache_error"] = str(e)
    return curve
