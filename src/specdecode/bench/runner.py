"""The bench loop: every method on every prompt, interleaved, with honest timing.

- Everything the user can get wrong is checked before the first forward: method names and
  options, the prompt set, prompt lengths, a draft model where one is needed, and that the
  result files can be written (a probe file beside ``--out``, before the model is loaded).
- Warm-up: a few fixed prompts (not from the set, so drafters that learn across prompts do not
  see the measured ones early) through every method, not counted.
- Methods are interleaved prompt by prompt, in an order that rotates with each prompt, so slow
  drift (thermal, other load) touches every method alike. Same max new tokens for all.
- Each run is timed by the runner (wall clock, CUDA synchronised), with its peak memory.
- Under greedy decoding every output is compared with ``ar``'s; where one differs, one target
  forward over prompt + common prefix tells a floating-point near-tie from a real error.
- After each prompt the JSON is rewritten atomically; Ctrl-C writes what was gathered, marked
  ``"interrupted": true`` (``specdecode bench`` turns a SIGTERM into the same interrupt).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specdecode.bench.baselines import BASELINES, RunOutput, build_baseline, is_baseline
from specdecode.bench.datasets import Prompt, load_prompts, round_robin
from specdecode.bench.metrics import PromptRecord, first_difference, strip_at_eos, summarize
from specdecode.errors import SpecDecodeError
from specdecode.machine import machine_info

DEFAULT_METHODS = ("hf-ar", "hf-pld", "ar", "pld")
REFERENCE = "ar"  # the output every method must reproduce under greedy decoding
WARMUP_PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step, how to compute the greatest common divisor of 84 and 36.",
    "Summarize the main causes of the French Revolution in a few sentences.",
)
WARMUP_MAX_NEW_TOKENS = 64
# Default near-tie tolerance on the target's logits, by dtype: a few units of the rounding error
# that a different reduction order (one token versus a chunk of tokens per forward) can cause.
TIE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 0.05, torch.bfloat16: 0.25}


@dataclass
class BenchConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    model: str | None = None
    draft: str | None = None
    dataset: str | None = None
    prompts_file: str | None = None
    categories: list[str] | None = None
    n_per_category: int | None = None
    prompt_seed: int | None = None
    max_new_tokens: int = 256
    warmup: int = 2
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0  # sampling seed (per prompt: seed + prompt index); unused when greedy
    coupling: str = "residual"  # how sampling draws (see specdecode.sampling); residual: the papers'
    device: str = "auto"
    dtype: str | None = None
    out: str | Path | None = "bench-results.json"
    plots: bool = True
    method_options: dict[str, dict[str, str]] = field(default_factory=dict)
    raw: bool = False
    tie_tolerance: float | None = None
    calibration: str = "cached"  # "cached": show a cached curve; "measure": calibrate if missing; "off"
    command: str | None = None
    progress: bool = True


@dataclass
class BenchResult:
    result: dict
    records: list[PromptRecord]
    interrupted: bool = False
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- validation


def known_method_names() -> list[str]:
    from specdecode.registry import list_methods

    return [s.name for s in list_methods()] + list(BASELINES)


def method_spec(name: str):
    """The MethodSpec of a registry method or a baseline; SpecDecodeError naming all known ones."""
    if is_baseline(name):
        return BASELINES[name]
    from specdecode.registry import get_method

    try:
        return get_method(name)
    except SpecDecodeError:
        raise SpecDecodeError(
            f"unknown method {name!r}; known methods: {', '.join(known_method_names())}"
        ) from None


def validate_methods(
    methods: list[str], options: dict[str, dict[str, str]], *, draft
) -> dict[str, dict[str, Any]]:
    """Check names, options and draft needs (``draft``: the draft model or its name, None for
    none); return each method's parsed options."""
    from specdecode.models.pairing import check_draft
    from specdecode.registry import parse_options

    if not methods:
        raise SpecDecodeError("no methods given: pass --methods, e.g. --methods hf-ar,ar,pld")
    dupes = sorted({m for m in methods if methods.count(m) > 1})
    if dupes:
        raise SpecDecodeError(f"method listed twice: {', '.join(dupes)}")
    for m in options:
        if m not in methods:
            raise SpecDecodeError(
                f"--method-option for {m!r}, which is not among --methods ({', '.join(methods)})"
            )
    parsed = {}
    for m in methods:
        spec = method_spec(m)
        check_draft(spec, draft)
        parsed[m] = parse_options(spec, options.get(m))
    return parsed


def check_prompt_lengths(
    encoded: list[tuple[Prompt, list[int]]], max_new_tokens: int, max_context: int | None
) -> None:
    if max_context is None:
        return
    too_long = [(p.id, len(ids)) for p, ids in encoded if len(ids) + max_new_tokens > max_context]
    if too_long:
        shown = ", ".join(f"{pid} ({n} tokens)" for pid, n in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        raise SpecDecodeError(
            f"prompt + {max_new_tokens} new tokens exceeds the model's context of {max_context} for "
            f"{shown}{more}: lower --max-new-tokens or leave those prompts out"
        )


# --------------------------------------------------------------------------- measuring


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

    def generate_ids(self, prompt_ids: list[int], *, max_new_tokens: int, sampling) -> RunOutput:
        r = self.decoder.generate_ids(prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling)
        return RunOutput(list(r.token_ids), list(r.accepted_lengths), r.finish_reason, dict(r.phase_seconds))


def build_runner(name: str, target, *, draft=None, options: dict | None = None):
    spec = method_spec(name)
    use_draft = draft if spec.needs_draft else None
    if is_baseline(name):
        return build_baseline(name, target, draft=use_draft, options=options)
    return EngineRunner(name, target, draft=use_draft, options=options)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(runner, prompt_ids, *, max_new_tokens, sampling, device, memory: MemoryMeter):
    """Run once; return (output, seconds, peak MB)."""
    _sync(device)
    memory.reset()
    start = time.perf_counter()
    out = runner.generate_ids(prompt_ids, max_new_tokens=max_new_tokens, sampling=sampling)
    _sync(device)
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
    ids = torch.tensor([prompt_ids + prefix], dtype=torch.long, device=loaded.device)
    logits = loaded.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()  # [vocab]
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


# --------------------------------------------------------------------------- output files


def output_paths(out: Path, *, plots: bool = True) -> list[Path]:
    """The files a run writes for ``--out FILE.json``."""
    paths = [out, out.with_suffix(".md")]
    if plots:
        paths += [out.with_name(f"{out.stem}-{kind}.png") for kind in ("speedup", "accept", "latency")]
    return paths


def check_out_path(out: Path, *, plots: bool = True) -> None:
    """A SpecDecodeError now, before any prompt runs, when the result files cannot be written:
    not a .json name, a folder in the way, a missing folder, or a folder that refuses a file.
    The last is a real write probe (a temporary file beside the target, removed at once):
    permission bits say nothing when running as root or on a read-only or virtual filesystem."""
    from specdecode.files import ensure_writable

    if out.suffix != ".json":
        raise SpecDecodeError(f"--out must name a .json file, got {out}")
    for p in output_paths(out, plots=plots):
        if p.is_dir():
            raise SpecDecodeError(f"--out {out}: {p} is a folder, not a file; choose another name")
    parent = out.parent
    for a in [parent, *parent.parents]:
        if a.exists() and not a.is_dir():
            raise SpecDecodeError(f"--out {out}: {a} is a file, not a folder")
    if not parent.exists():
        raise SpecDecodeError(f"the folder for --out does not exist: {parent}")
    try:
        ensure_writable(parent)
    except OSError as e:
        raise SpecDecodeError(
            f"--out {out}: cannot create a file in {parent} ({e.strerror or e}); choose a folder you "
            "can write to"
        ) from None


def write_json_atomic(path: Path, data: dict) -> None:
    from specdecode.files import write_atomic

    write_atomic(path, json.dumps(data, indent=1, default=_json_default))


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, torch.dtype):
        return str(o).removeprefix("torch.")
    if isinstance(o, torch.device):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_outputs(result: dict, out: str | Path, *, plots: bool = True) -> list[Path]:
    """FILE.json, FILE.md and (with ``plots``) FILE-speedup.png, FILE-accept.png, FILE-latency.png."""
    from specdecode.bench.report import markdown_report
    from specdecode.files import write_atomic

    out = Path(out)
    write_json_atomic(out, result)
    md = out.with_suffix(".md")
    write_atomic(md, markdown_report(result))
    files = [out, md]
    if plots:
        from specdecode.bench.plots import write_plots

        files += write_plots(result, out)
    return files


def build_result(
    *,
    records: list[PromptRecord],
    prompts: list[tuple[Prompt, list[int]]],
    methods: list[str],
    meta: dict,
    latency_curve: dict | None,
    complete: bool,
    interrupted: bool,
    error: str | None = None,
) -> dict:
    baseline = meta.get("baseline")
    summary, categories = summarize(records, methods, baseline)
    by_prompt: dict[str, dict[str, PromptRecord]] = {}
    for r in records:
        by_prompt.setdefault(r.prompt_id, {})[r.method] = r
    per_prompt = []
    for p, ids in prompts:
        runs = by_prompt.get(p.id)
        if not runs:
            continue
        results = {}
        for m in methods:
            if m in runs:
                d = runs[m].to_dict()
                for k in ("prompt_id", "category", "method", "prompt_tokens"):
                    d.pop(k)
                results[m] = d
        per_prompt.append(
            {
                "id": p.id,
                "category": p.category,
                "prompt_tokens": len(ids),
                "preview": p.text[:100],
                "results": results,
            }
        )
    result = {
        "format": "specdecode-bench",
        "version": 1,
        "complete": complete,
        "interrupted": interrupted,
        "summary": summary,
        "categories": categories,
        "prompts": per_prompt,
        "meta": {**meta, "prompts_done": len(per_prompt)},
    }
    if error:
        result["error"] = error
    if latency_curve:
        result["latency_curve"] = latency_curve
    return result


# --------------------------------------------------------------------------- the run


def run_bench(
    config: BenchConfig,
    *,
    target=None,
    draft=None,
    prompts: list[Prompt] | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the benchmark described by ``config``; ``target``/``draft``/``prompts`` may be given
    ready-made (tests), else they are loaded from the config. Writes the output files when
    ``config.out`` is set. Returns with ``interrupted=True`` after Ctrl-C (files written)."""
    from specdecode.sampling import MAX_SEED, SamplingConfig

    log = log or (lambda msg: print(msg, file=sys.stderr))
    methods = list(config.methods)
    options = validate_methods(
        methods, config.method_options, draft=draft if draft is not None else config.draft
    )
    if config.max_new_tokens < 1:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}")
    if config.warmup < 0:
        raise SpecDecodeError(f"--warmup must be >= 0, got {config.warmup}")
    sampling_base = SamplingConfig(
        temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, coupling=config.coupling
    )
    if prompts is None:
        prompts = load_prompts(
            dataset=config.dataset,
            prompts_file=config.prompts_file,
            categories=config.categories,
            n_per_category=config.n_per_category,
            seed=config.prompt_seed,
        )
    if not prompts:
        raise SpecDecodeError("the prompt set is empty")
    last_seed = config.seed + len(prompts) - 1  # prompt i samples with seed + i
    if config.seed < 0 or last_seed > MAX_SEED:
        raise SpecDecodeError(
            f"--seed must be a whole number from 0 to 2**64-1 (prompt i uses seed + i, "
            f"{len(prompts)} prompts), got {config.seed}"
        )
    out_path = Path(config.out) if config.out else None
    if out_path is not None:
        check_out_path(out_path, plots=config.plots)

    if target is None:
        from specdecode.models.loader import load_model

        target = load_model(config.model, device=config.device, dtype=config.dtype)
    if draft is None and config.draft is not None:
        from specdecode.models.loader import load_model

        draft = load_model(config.draft, device=str(target.device), dtype=config.dtype)
    device = torch.device(target.device)

    encoded = [(p, target.encode_prompt(p.text, raw=config.raw)) for p in prompts]
    check_prompt_lengths(encoded, config.max_new_tokens, target.max_context)
    runners = {m: build_runner(m, target, draft=draft, options=options[m]) for m in methods}

    greedy = sampling_base.greedy
    reference = REFERENCE if REFERENCE in methods and greedy else None
    baseline = "hf-ar" if "hf-ar" in methods else ("ar" if "ar" in methods else None)
    tolerance = (
        config.tie_tolerance if config.tie_tolerance is not None else TIE_TOLERANCE.get(target.dtype, 1e-3)
    )
    eos_ids = set(target.eos_token_ids)
    memory = MemoryMeter(device)

    curve = None
    if config.calibration != "off":
        from specdecode import cost

        if config.calibration == "measure":
            log("calibrating the target's forward latency (cached afterwards)...")
            curve = cost.load_or_calibrate(target, max_n=64).to_dict()
        else:
            cached = cost.read_cached(target)
            curve = cached.to_dict() if cached else None

    import transformers

    from specdecode import __version__

    meta = {
        "model": target.name,
        "model_source": target.source,
        "model_key": target.key,
        "draft": draft.name if draft is not None else None,
        "device": str(device),
        "dtype": str(target.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "specdecode": __version__,
        "machine": machine_info(device),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": config.command,
        "methods": methods,
        "method_options": {m: o for m, o in options.items() if o},
        "dataset": config.dataset,
        "prompts_file": str(config.prompts_file) if config.prompts_file else None,
        "categories": list(dict.fromkeys(p.category for p in prompts)),
        "n_per_category": config.n_per_category,
        "n_prompts": len(prompts),
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_k": config.top_k,
        "top_p": config.top_p,
        "seed": config.seed if not greedy else None,
        "coupling": config.coupling if not greedy else None,
        "raw": config.raw,
        "warmup": config.warmup,
        "baseline": baseline,
        "reference": reference,
        "tie_tolerance": tolerance if reference else None,
        "memory_kind": memory.kind,
        "timing": "wall clock around each generate call (prompt ids in, ids out; prefill included)",
    }

    records: list[PromptRecord] = []

    def snapshot(complete: bool, interrupted: bool, error: str | None = None) -> dict:
        return build_result(
            records=records,
            prompts=encoded,
            methods=methods,
            meta=meta,
            latency_curve=curve,
            complete=complete,
            interrupted=interrupted,
            error=error,
        )

    from tqdm.auto import tqdm

    bar = None
    try:
        # ---- warm-up: fixed prompts, every method, not counted
        warm = [target.encode_prompt(t, raw=config.raw) for t in WARMUP_PROMPTS[: config.warmup]]
        warm += [ids for _, ids in encoded[: max(0, config.warmup - len(warm))]]
        warm_sampling = SamplingConfig(
            config.temperature, config.top_k, config.top_p, config.seed, coupling=config.coupling
        )
        if warm:
            wbar = tqdm(
                total=len(warm) * len(methods),
                desc="warm-up",
                unit="run",
                disable=not config.progress,
                leave=False,
            )
            with wbar:
                for i, ids in enumerate(warm):
                    for m in rotation(methods, i):
                        wbar.set_postfix_str(m)
                        try:
                            runners[m].generate_ids(
                                ids,
                                max_new_tokens=min(config.max_new_tokens, WARMUP_MAX_NEW_TOKENS),
                                sampling=warm_sampling,
                            )
                        except (SpecDecodeError, KeyboardInterrupt):
                            raise
                        except Exception as e:
                            why = " ".join(str(e).split())[:300]
                            raise SpecDecodeError(
                                f"method {m!r} failed during warm-up: {type(e).__name__}: {why}"
                            ) from e
                        wbar.update()

        # ---- the measured runs
        bar = tqdm(total=len(encoded) * len(methods), desc="bench", unit="run", disable=not config.progress)
        # Timed round-robin over the categories (the first prompt of each, then the second, ...):
        # the machine's drift hits every category alike, and an interrupted run stays balanced.
        order = round_robin(list(range(len(encoded))), category=lambda j: encoded[j][0].category)
        for turn, i in enumerate(order):
            prompt, ids = encoded[i]
            sampling = SamplingConfig(
                config.temperature,
                config.top_k,
                config.top_p,
                None if greedy else config.seed + i,
                coupling=config.coupling,
            )
            done: dict[str, PromptRecord] = {}
            for m in rotation(methods, turn):
                bar.set_postfix_str(f"{prompt.id} {m}")
                out, seconds, peak = timed_run(
                    runners[m],
                    ids,
                    max_new_tokens=config.max_new_tokens,
                    sampling=sampling,
                    device=device,
                    memory=memory,
                )
                done[m] = PromptRecord(
                    prompt_id=prompt.id,
                    category=prompt.category,
                    method=m,
                    prompt_tokens=len(ids),
                    new_tokens=len(out.token_ids),
                    seconds=seconds,
                    token_ids=out.token_ids,
                    steps=len(out.accepted_lengths) if out.accepted_lengths is not None else None,
                    accepted_lengths=out.accepted_lengths,
                    peak_memory_mb=peak,
                    finish_reason=out.finish_reason,
                    phase_seconds=out.phase_seconds,
                )
                bar.update()
            if reference is not None:
                ref = done[reference]
                for m in methods:
                    check_identity(target, ids, ref, done[m], eos_ids, tolerance)
            records.extend(done[m] for m in methods)
            if out_path is not None:
                write_json_atomic(out_path, snapshot(complete=False, interrupted=False))
        bar.close()
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        log(f"interrupted: keeping the {len({r.prompt_id for r in records})} prompts finished so far")
        result = snapshot(complete=False, interrupted=True)
        files = write_outputs(result, out_path, plots=config.plots) if out_path is not None else []
        return BenchResult(result, records, interrupted=True, files=files)
    except BaseException as e:
        if bar is not None:
            bar.close()
        if out_path is not None and records:
            try:
                write_json_atomic(out_path, snapshot(False, False, error=f"{type(e).__name__}: {e}"))
            except Exception:
                pass
        raise
    result = snapshot(complete=True, interrupted=False)
    files = write_outputs(result, out_path, plots=config.plots) if out_path is not None else []
    return BenchResult(result, records, files=files)
