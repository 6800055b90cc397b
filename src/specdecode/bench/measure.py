"""Measuring one run of one method on one prompt: the runners (registry methods through the
engine, transformers baselines), wall-clock timing with CUDA synchronised, peak memory, the
order methods take turns in, and the comparison with the reference output that tells a
floating-point near-tie from a real error."""

from __future__ import annotations

import re
import resource
import time

import torch

from specdecode.bench.baselines import RunOutput, build_baseline, is_baseline
from specdecode.bench.checks import method_spec
from specdecode.bench.metrics import PromptRecord, first_difference, strip_at_eos
from specdecode.machine import synchronize

# Default near-tie tolerance on the target's logits, by dtype: a few units of the rounding error
# that a different reduction order (one token versus a chunk of tokens per forward) can cause.
TIE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 0.05, torch.bfloat16: 0.25}


class MemoryMeter:
    """Peak memory of one run: CUDA peak allocated on a GPU; on a CPU the process's peak RSS,
    reset before each run through /proc/self/clear_refs where Linux allows it."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.kind = "peak CUDA memory allocated by torch during each run"
            self.resettable = True
        else:
            self.resettable = self._reset_rss()
            self.kind = (
                "peak process RSS during each run (VmHWM, reset before the run)"
                if self.resettable
                else "peak process RSS since start (cannot be reset here)"
            )

    @staticmethod
    def _reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _vm_hwm_kb() is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._reset_rss()

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kb = _vm_hwm_kb() if self.resettable else None
        if kb is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024


def _vm_hwm_kb() -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)\s*kB", f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


class EngineRunner:
    """A registry method through :func:`specdecode.engine.build_decoder` (one per bench run:
    some drafters learn across prompts)."""

    def __init__(self, name: str, target, *, draft=None, options: dict | None = None) -> None:
        from specdecode.engine import build_decoder

        self.name = name
        self.decoder = build_decoder(name, target, draft=draft, options=options)

    def generate_ids(
        self, prompt_ids: list[int], *, max_new_tokens: int, sampling, constraint=None
    ) -> RunOutput:
        r = self.decoder.generate_ids(
            prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling, constraint=constraint
        )
        self.last_ran = r.method_ran if r.method_ran != self.name else None  # auto's choice
        return RunOutput(list(r.token_ids), list(r.accepted_lengths), r.finish_reason, dict(r.phase_seconds))


def build_runner(name: str, target, *, draft=None, options: dict | None = None):
    spec = method_spec(name)
    use_draft = draft if spec.needs_draft else None
    if is_baseline(name):
        return build_baseline(name, target, draft=use_draft, options=options)
    from specdecode.strategies import build_strategy, is_strategy

    if is_strategy(name):
        return build_strategy(name, target, draft=use_draft, options=options)
    return EngineRunner(name, target, draft=use_draft, options=options)


def timed_run(runner, prompt_ids, *, max_new_tokens, sampling, device, memory: MemoryMeter, constraint=None):
    """Run once (under ``constraint``, a prompt's schema, when given); return (output, seconds, peak MB)."""
    synchronize(device)
    memory.reset()
    extra = {"constraint": constraint} if constraint is not None else {}
    start = time.perf_counter()
    out = runner.generate_ids(prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling, **extra)
    synchronize(device)
    seconds = time.perf_counter() - start
    return out, seconds, memory.peak_mb()


def rotation(methods: list[str], i: int) -> list[str]:
    """The order methods run in on prompt ``i``: rotated by one per prompt."""
    k = i % len(methods)
    return methods[k:] + methods[:k]


@torch.inference_mode()
def tie_gap(loaded, prompt_ids: list[int], prefix: list[int], a: int | None, b: int | None) -> float:
    """How far from a tie the target is after ``prompt + prefix``: the top logit minus the lower
    of tokens ``a`` and ``b`` (the two outputs' choices); with a choice unknown, the top-2 gap."""
    from specdecode.backends import close_target, new_target

    target = new_target(loaded)  # the model's own backend: llama.cpp's logits on llama.cpp
    try:
        logits = target.prefill(prompt_ids + prefix)  # [vocab]
    finally:
        close_target(target)
    top = torch.topk(logits, 2).values
    if a is None or b is None:
        return float(top[0] - top[1])
    return float(top[0] - torch.minimum(logits[a], logits[b]))


def check_identity(
    loaded,
    prompt_ids: list[int],
    ref: PromptRecord,
    rec: PromptRecord,
    eos_ids: set[int],
    tolerance: float,
) -> None:
    """Fill ``rec``'s identity fields by comparison with the reference output."""
    k = first_difference(ref.token_ids, rec.token_ids, eos_ids)
    rec.first_difference = k
    rec.identical_to_ar = k is None
    if k is None:
        rec.near_tie = None
        return
    ref_ids, ref_eos = strip_at_eos(ref.token_ids, eos_ids)
    out_ids, out_eos = strip_at_eos(rec.token_ids, eos_ids)
    eos_tok = min(eos_ids) if eos_ids else None

    def choice(ids: list[int], ended_on_eos: bool) -> int | None:
        if k < len(ids):
            return ids[k]
        return eos_tok if ended_on_eos else None

    gap = tie_gap(loaded, prompt_ids, ref_ids[:k], choice(ref_ids, ref_eos), choice(out_ids, out_eos))
    rec.tie_gap = gap
    rec.near_tie = gap <= tolerance
