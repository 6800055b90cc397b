"""``--dtype auto``: the fastest dtype the device runs natively, measured once and cached.

- CUDA: bfloat16 where the GPU supports it, else float16 (no measurement: both are native
  there, and float32 is several times slower).
- CPU with native bfloat16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo): the
  model is loaded in float32 and in bfloat16, one forward over 1 and over 8 tokens after a
  256-token context is timed in each (median of a few), and the dtype with the smaller sum
  wins; the choice is cached per model, device, CPU model and thread count beside the latency
  curves (``calibration/dtype-...json``), so later loads do not measure again.
- Any other CPU: float32 (bfloat16 is emulated there, and slower).

Float32 stays the default and the bit-exact mode: in bfloat16 a forward's logits depend on how
many tokens it scores (the reductions group differently), so speculative output equals ``ar``'s
except where the target's two best tokens are within rounding of each other (near-ties).
"""

from __future__ import annotations

import json
import time

import torch

from specdecode.files import write_atomic

FORMAT = "specdecode-dtype-choice"
CONTEXT = 256
NS = (1, 8)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return any(f in (cpu_flags() if flags is None else flags) for f in BF16_FLAGS)


def _choice_path(key: str, device: torch.device):
    from specdecode.cost import current_threads, device_label
    from specdecode.models.cache import cache_dir

    return cache_dir() / "calibration" / f"dtype-{key}-{device_label(device)}-t{current_threads()}.json"


def _read_choice(path, key: str, device: torch.device) -> torch.dtype | None:
    from specdecode.cost import current_threads, device_label
    from specdecode.machine import device_name

    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        return None
    want = {
        "model_key": key,
        "device": device_label(device),
        "device_name": device_name(device),
        "threads": current_threads(),
    }
    if any(d.get(k) != v for k, v in want.items()):
        return None
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(d.get("dtype"))


def measure(name: str | None, device: torch.device, repeats: int = 5) -> dict[str, list[float]]:
    """Seconds of one forward over each of :data:`NS` tokens after :data:`CONTEXT` cached ones,
    for the model loaded in float32 and in bfloat16 (the median of ``repeats``)."""
    from specdecode.cost import calibrate
    from specdecode.models.loader import load_model

    out = {}
    for dt in ("float32", "bfloat16"):
        loaded = load_model(name, device=str(device), dtype=dt)
        context = CONTEXT
        if loaded.max_context is not None:
            context = max(1, min(CONTEXT, loaded.max_context - NS[-1] - 2))
        curve = calibrate(loaded, ns=list(NS), repeats=repeats, contexts=[context])
        out[dt] = list(curve.seconds)
    return out


def auto_dtype(name: str | None, device: torch.device, *, log=None) -> torch.dtype:
    """The dtype ``--dtype auto`` loads ``name`` in on ``device`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or not cpu_has_native_bf16():
        return torch.float32
    from specdecode.cost import current_threads, device_label
    from specdecode.machine import device_name
    from specdecode.models.loader import load_model

    key = load_model(name, device=str(device), dtype="float32").key
    path = _choice_path(key, device)
    cached = _read_choice(path, key, device)
    if cached is not None:
        return cached
    if log is not None:
        log("--dtype auto: timing the model in float32 and bfloat16 (once; cached)...")
    timings = measure(name, device)
    chosen = "bfloat16" if sum(timings["bfloat16"]) < sum(timings["float32"]) else "float32"
    record = {
        "format": FORMAT,
        "version": 1,
        "model_key": key,
        "device": device_label(device),
        "device_name": device_name(device),
        "threads": current_threads(),
        "dtype": chosen,
        "context": CONTEXT,
        "ns": list(NS),
        "seconds": timings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        write_atomic(path, json.dumps(record, indent=2))
    except OSError:
        pass  # a read-only cache: measured again next time, never wrong
    return torch.float32 if chosen == "float32" else torch.bfloat16
