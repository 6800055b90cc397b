"""The bench loop: every method on every prompt, interleaved, with honest timing.

- Everything the user can get wrong is checked before the first forward: method names and
  options, the prompt set, prompt lengths, a draft model where one is needed
  (:mod:`~specdecode.bench.checks`), and that the result files can be written (a probe file
  beside ``--out``, before the model is loaded; :mod:`~specdecode.bench.results`).
- Warm-up: a few fixed prompts (not from the set, so drafters that learn across prompts do not
  see the measured ones early) through every method, not counted.
- Methods are interleaved prompt by prompt, in an order that rotates with each prompt, so slow
  drift (thermal, other load) touches every method alike. Same max new tokens for all.
- Each run is timed (wall clock, CUDA synchronised), with its peak memory
  (:mod:`~specdecode.bench.measure`).
- Under greedy decoding every output is compared with ``ar``'s; where one differs, one target
  forward over prompt + common prefix tells a floating-point near-tie from a real error.
- Conversations (``turns``: 2 or None for all): a prompt with several user turns runs turn 1,
  then each later turn with the earlier turns and *this method's own* answers before it
  (:mod:`~specdecode.bench.conversation`); every turn is timed and recorded with its number.
- After each prompt the JSON is rewritten atomically; Ctrl-C writes what was gathered, marked
  ``"interrupted": true`` (``specdecode bench`` turns a SIGTERM into the same interrupt).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specdecode.bench.checks import check_prompt_lengths, check_run
from specdecode.bench.conversation import encode_turn
from specdecode.bench.datasets import Prompt, round_robin
from specdecode.bench.measure import (
    TIE_TOLERANCE,
    MemoryMeter,
    build_runner,
    check_identity,
    rotation,
    timed_run,
)
from specdecode.bench.metrics import PromptRecord, first_difference
from specdecode.bench.results import build_result, check_out_path, run_meta, write_json_atomic, write_outputs
from specdecode.errors import SpecDecodeError
from specdecode.registry import list_methods

DEFAULT_METHODS = ("hf-ar", "hf-pld", "ar", "pld")
REFERENCE = "ar"  # the output every method must reproduce under greedy decoding
WARMUP_PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step, how to compute the greatest common divisor of 84 and 36.",
    "Summarize the main causes of the French Revolution in a few sentences.",
)
WARMUP_MAX_NEW_TOKENS = 64


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
    backend: str = "transformers"  # what runs the target: transformers or llama.cpp (specdecode.backends)
    out: str | Path | None = "bench-results.json"
    plots: bool = True
    method_options: dict[str, dict[str, str]] = field(default_factory=dict)
    raw: bool = False
    tie_tolerance: float | None = None
    calibration: str = "cached"  # "cached": show a cached curve; "measure": calibrate if missing; "off"
    command: str | None = None
    progress: bool = True
    # user turns per prompt: 1 (the first only), k (the first k), None (all the prompt has)
    turns: int | None = 1


@dataclass
class BenchResult:
    result: dict
    records: list[PromptRecord]
    interrupted: bool = False
    files: list[Path] = field(default_factory=list)


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
    log = log or (lambda msg: print(msg, file=sys.stderr))
    options, prompts, sampling = check_run(
        config, prompts, draft=draft if draft is not None else config.draft
    )
    out_path = Path(config.out) if config.out else None
    if out_path is not None:
        check_out_path(out_path, plots=config.plots)
    target, draft = _load_models(config, target, draft)
    run = _Run(config, target, draft, prompts, options, greedy=sampling.greedy, log=log)

    def save_progress() -> None:
        if out_path is not None:
            write_json_atomic(out_path, run.result(complete=False, interrupted=False))

    try:
        run.warm_up()
        run.measure(after_prompt=save_progress)
    except KeyboardInterrupt:
        log(f"interrupted: keeping the {len({r.prompt_id for r in run.records})} prompts finished so far")
        return run.finish(out_path, interrupted=True)
    except BaseException as e:
        if out_path is not None and run.records:
            try:
                error = f"{type(e).__name__}: {e}"
                write_json_atomic(out_path, run.result(complete=False, interrupted=False, error=error))
            except Exception:
                pass
        raise
    return run.finish(out_path, interrupted=False)


def _load_models(config: BenchConfig, target, draft):
    """The target and draft given, else loaded as the config says (the draft on the target's
    device)."""
    from specdecode.models.loader import load_model

    if target is None:
        target = load_model(config.model, device=config.device, dtype=config.dtype, backend=config.backend)
    if draft is None and config.draft is not None:
        draft = load_model(config.draft, device=str(target.device), dtype=config.dtype)
    return target, draft


def _latency_curve(config: BenchConfig, target, log: Callable[[str], None]) -> dict | None:
    """The target's latency curve for the result: a cached one, measured first when
    ``config.calibration`` is "measure", none when it is "off"."""
    if config.calibration == "off":
        return None
    from specdecode import cost

    if config.calibration == "measure":
        log("calibrating the target's forward latency (cached afterwards)...")
        return cost.load_or_calibrate(target, max_n=64).to_dict()
    cached = cost.read_cached(target)
    return cached.to_dict() if cached else None


def _warm_once(runner, method: str, ids: list[int], max_new_tokens: int, sampling) -> None:
    """One untimed run; a method that fails here is named in a SpecDecodeError."""
    try:
        runner.generate_ids(ids, max_new_tokens=max_new_tokens, sampling=sampling)
    except (SpecDecodeError, KeyboardInterrupt):
        raise
    except Exception as e:
        why = " ".join(str(e).split())[:300]
        raise SpecDecodeError(f"method {method!r} failed during warm-up: {type(e).__name__}: {why}") from e


def _constraints(prompts, target, runners) -> dict:
    """Each prompt's schema compiled for the target (a bad one is an error before any run)."""
    with_schema = [p for p in prompts if p.schema is not None]
    if not with_schema:
        return {}
    from specdecode.bench.baselines import HFBaseline
    from specdecode.bench.measure import EngineRunner
    from specdecode.constraints import compile_constraint

    for m, runner in runners.items():
        if not isinstance(runner, (EngineRunner, HFBaseline)):
            raise SpecDecodeError(
                f"method {m!r} cannot generate under a prompt's 'schema' (constrained generation)"
            )
    out = {}
    for p in with_schema:
        try:
            out[p.id] = compile_constraint(target, json_schema=p.schema)
        except SpecDecodeError as e:
            raise SpecDecodeError(f"prompt {p.id!r}: {e}") from None
    return out


class _Run:
    """One bench run, checked and loaded: the prompts encoded, a runner per method, the meta.
    It warms up, measures prompt by prompt, and keeps the records."""

    def __init__(self, config: BenchConfig, target, draft, prompts, options, *, greedy: bool, log) -> None:
        self.config, self.target = config, target
        self.methods = list(config.methods)
        self.device = torch.device(target.device)
        self.encoded = [(p, target.encode_prompt(p.text, raw=config.raw)) for p in prompts]
        check_prompt_lengths(self.encoded, config.max_new_tokens, target.max_context)
        self.runners = {m: build_runner(m, target, draft=draft, options=options[m]) for m in self.methods}
        self.constraints = _constraints(prompts, target, self.runners)  # prompts with a schema
        self.greedy = greedy
        # the output to reproduce: ar's, or, on the llama.cpp backend without ar, llama.cpp's own
        reference = next((m for m in (REFERENCE, "llama-ar") if m in self.methods), None)
        self.reference = reference if greedy else None
        baseline = "hf-ar" if "hf-ar" in self.methods else ("ar" if "ar" in self.methods else None)
        self.tolerance = (
            config.tie_tolerance
            if config.tie_tolerance is not None
            else TIE_TOLERANCE.get(target.dtype, 1e-3)
        )
        self.eos_ids = set(target.eos_token_ids)
        self.memory = MemoryMeter(self.device)
        self.curve = _latency_curve(config, target, log)
        if self.curve is None and config.calibration == "cached":
            drafting = {spec.name for spec in list_methods()} - {REFERENCE}
            sized = [m for m in self.methods if m in drafting]
            if sized:
                log(
                    f"note: no latency curve is cached for {target.name} ({target.device}, {target.dtype}, "
                    f"{torch.get_num_threads()} threads), so {', '.join(sized)} size their drafts from a "
                    "CPU-like fallback curve, and auto estimates plain decoding from it; add --calibrate "
                    "(or run `specdecode calibrate` with the same model, dtype and --threads) to size "
                    "them from this machine's timings"
                )
        self.meta = run_meta(
            config, target=target, draft=draft, prompts=prompts, options=options, greedy=greedy,
            baseline=baseline, reference=self.reference, tolerance=self.tolerance,
            memory_kind=self.memory.kind,
        )  # fmt: skip
        self.records: list[PromptRecord] = []

    def sampling(self, seed: int | None):
        from specdecode.sampling import SamplingConfig

        c = self.config
        return SamplingConfig(c.temperature, c.top_k, c.top_p, seed, coupling=c.coupling)

    def warm_up(self) -> None:
        """A few fixed prompts (then the set's first ones, if more are asked for) through every
        method, not counted."""
        from tqdm.auto import tqdm

        config = self.config
        warm = [self.target.encode_prompt(t, raw=config.raw) for t in WARMUP_PROMPTS[: config.warmup]]
        warm += [ids for _, ids in self.encoded[: max(0, config.warmup - len(warm))]]
        if not warm:
            return
        sampling = self.sampling(config.seed)
        max_new_tokens = min(config.max_new_tokens, WARMUP_MAX_NEW_TOKENS)
        total = len(warm) * len(self.methods)
        with tqdm(total=total, desc="warm-up", unit="run", disable=not config.progress, leave=False) as bar:
            for i, ids in enumerate(warm):
                for m in rotation(self.methods, i):
                    bar.set_postfix_str(m)
                    _warm_once(self.runners[m], m, ids, max_new_tokens, sampling)
                    bar.update()

    @property
    def multi_turn(self) -> bool:
        return self.config.turns != 1

    def measure(self, *, after_prompt: Callable[[], None]) -> None:
        """Every prompt through every method, timed; ``after_prompt()`` when a prompt is done."""
        from tqdm.auto import tqdm

        turns = sum(len(p.user_turns(self.config.turns)) for p, _ in self.encoded)
        total = turns * len(self.methods)
        # Timed round-robin over the categories (the first prompt of each, then the second, ...):
        # the machine's drift hits every category alike, and an interrupted run stays balanced.
        order = round_robin(list(range(len(self.encoded))), category=lambda j: self.encoded[j][0].category)
        with tqdm(total=total, desc="bench", unit="run", disable=not self.config.progress) as bar:
            for turn, i in enumerate(order):
                for done in self.measure_prompt(i, rotation(self.methods, turn), bar):
                    self.records.extend(done[m] for m in self.methods)
                after_prompt()

    def measure_prompt(self, i: int, order: list[str], bar) -> list[dict[str, PromptRecord]]:
        """Prompt ``i`` through every method in ``order``, turn by turn (each method's later
        turns after its own earlier answers); each output compared with the reference's when
        there is one. One dict of records per turn."""
        prompt, first_ids = self.encoded[i]
        user_turns = prompt.user_turns(self.config.turns)
        sampling = self.sampling(None if self.greedy else self.config.seed + i)
        answers: dict[str, list[list[int]]] = {m: [] for m in order}
        per_turn: list[dict[str, PromptRecord]] = []
        for k in range(1, len(user_turns) + 1):
            inputs = {
                m: encode_turn(self.target, user_turns, answers[m], first_ids, raw=self.config.raw)
                for m in order
            }
            if k > 1:
                self._check_turn_length(prompt, k, inputs)
            done: dict[str, PromptRecord] = {}
            for m in order:
                bar.set_postfix_str(f"{prompt.id}{f' turn {k}' if self.multi_turn else ''} {m}")
                ids = inputs[m]
                out, seconds, peak = timed_run(
                    self.runners[m], ids, max_new_tokens=self.config.max_new_tokens, sampling=sampling,
                    device=self.device, memory=self.memory, constraint=self.constraints.get(prompt.id),
                )  # fmt: skip
                answers[m].append(out.token_ids)
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
                    turn=k if self.multi_turn else None,
                    method_ran=getattr(self.runners[m], "last_ran", None),
                )
                bar.update()
            if self.reference is not None:
                self._compare(inputs, done, per_turn[-1] if per_turn else None)
            per_turn.append(done)
        return per_turn

    def _compare(self, inputs: dict[str, list[int]], done: dict[str, PromptRecord], before) -> None:
        """Each output against the reference's on the same input. A method whose input differs
        (its earlier answer differed from the reference's) is compared token by token only,
        its difference put down to the earlier one (near-tie or not)."""
        ref, ref_ids = done[self.reference], inputs[self.reference]
        for m in self.methods:
            rec = done[m]
            if inputs[m] == ref_ids:
                check_identity(self.target, ref_ids, ref, rec, self.eos_ids, self.tolerance)
                continue
            rec.context_differs = True
            rec.first_difference = first_difference(ref.token_ids, rec.token_ids, self.eos_ids)
            rec.identical_to_ar = rec.first_difference is None
            rec.near_tie = None if rec.identical_to_ar else bool(before and before[m].near_tie)

    def _check_turn_length(self, prompt: Prompt, k: int, inputs: dict[str, list[int]]) -> None:
        limit = self.target.max_context
        if limit is None:
            return
        longest = max(len(ids) for ids in inputs.values())
        if longest + self.config.max_new_tokens > limit:
            raise SpecDecodeError(
                f"prompt {prompt.id}, turn {k}: {longest} tokens of conversation + "
                f"{self.config.max_new_tokens} new tokens exceed the model's context of {limit}; "
                "lower --max-new-tokens or --turns"
            )

    def result(self, *, complete: bool, interrupted: bool, error: str | None = None) -> dict:
        return build_result(
            records=self.records, prompts=self.encoded, methods=self.methods, meta=self.meta,
            latency_curve=self.curve, complete=complete, interrupted=interrupted, error=error,
        )  # fmt: skip

    def finish(self, out_path: Path | None, *, interrupted: bool) -> BenchResult:
        """The final result, its files written when there is an ``out_path``."""
        result = self.result(complete=not interrupted, interrupted=interrupted)
        files = write_outputs(result, out_path, plots=self.config.plots) if out_path is not None else []
        return BenchResult(result, self.records, interrupted=interrupted, files=files)
