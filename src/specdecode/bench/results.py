"""What a bench run produces: the result dict (summary, categories, per-prompt figures, meta)
and its files (FILE.json, rewritten atomically after each prompt; FILE.md; the plots), and the
check, before anything runs, that those files can be written."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import torch

from specdecode.bench.datasets import Prompt
from specdecode.bench.metrics import PromptRecord, summarize
from specdecode.errors import SpecDecodeError
from specdecode.machine import machine_info


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
    by_prompt: dict[str, dict[int | None, dict[str, PromptRecord]]] = {}
    for r in records:
        by_prompt.setdefault(r.prompt_id, {}).setdefault(r.turn, {})[r.method] = r
    per_prompt = []
    for p, ids in prompts:
        runs = by_prompt.get(p.id)
        if not runs:
            continue
        first = runs.get(None, runs.get(1, {}))
        entry = {
            "id": p.id,
            "category": p.category,
            "prompt_tokens": len(ids),
            "preview": p.text[:100],
            "results": _run_dicts(first, methods, keep_prompt_tokens=False),
        }
        if any(k is not None for k in runs):  # bench --turns: every turn, its input's length kept
            entry["turns"] = {
                str(k): _run_dicts(runs[k], methods, keep_prompt_tokens=True) for k in sorted(runs)
            }
        per_prompt.append(entry)
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
    turns = sorted({r.turn for r in records if r.turn is not None})
    if turns:
        result["turns"] = {
            str(k): summarize([r for r in records if r.turn == k], methods, baseline)[0] for k in turns
        }
    if error:
        result["error"] = error
    if latency_curve:
        result["latency_curve"] = latency_curve
    return result


def _run_dicts(runs: dict[str, PromptRecord], methods: list[str], *, keep_prompt_tokens: bool) -> dict:
    out = {}
    for m in methods:
        if m in runs:
            d = runs[m].to_dict()
            for k in ("prompt_id", "category", "method", "turn"):
                d.pop(k)
            if not keep_prompt_tokens:
                d.pop("prompt_tokens")
            out[m] = d
    return out


def run_meta(
    config,
    *,
    target,
    draft,
    prompts: list[Prompt],
    options: dict[str, dict],
    greedy: bool,
    baseline: str | None,
    reference: str | None,
    tolerance: float,
    memory_kind: str,
) -> dict:
    """The ``meta`` of a result: what ran (models, methods and options, prompts, decoding
    settings), where (device, dtype, machine, library versions), when, and how it was measured."""
    import transformers

    from specdecode import __version__

    device = torch.device(target.device)
    return {
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
        "methods": list(config.methods),
        "method_options": {m: o for m, o in options.items() if o},
        "dataset": config.dataset,
        "prompts_file": str(config.prompts_file) if config.prompts_file else None,
        "categories": list(dict.fromkeys(p.category for p in prompts)),
        "n_per_category": config.n_per_category,
        "n_prompts": len(prompts),
        "max_new_tokens": config.max_new_tokens,
        "turns": "all" if config.turns is None else config.turns,
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
        "memory_kind": memory_kind,
        "timing": "wall clock around each generate call (prompt ids in, ids out; prefill included)",
    }
