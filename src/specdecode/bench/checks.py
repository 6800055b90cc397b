"""What a bench run checks before the first model is loaded (method names and options, a draft
model where one is needed, the numbers, the prompt set, the seed range) and, once the prompts
are encoded, their lengths against the model's context."""

from __future__ import annotations

from typing import Any

from specdecode.bench.baselines import BASELINES, is_baseline
from specdecode.bench.datasets import Prompt, load_prompts
from specdecode.errors import SpecDecodeError


def known_method_names() -> list[str]:
    from specdecode.registry import list_methods
    from specdecode.strategies import list_strategies

    return [s.name for s in list_methods()] + list(BASELINES) + [s.name for s in list_strategies()]


def method_spec(name: str):
    """The MethodSpec of a registry method or a baseline; SpecDecodeError naming all known ones."""
    if is_baseline(name):
        return BASELINES[name]
    from specdecode.registry import get_method
    from specdecode.strategies import get_strategy, is_strategy

    if is_strategy(name):  # lossy by design: compared with ar, not expected to equal it
        return get_strategy(name)

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


def check_run(
    config, prompts: list[Prompt] | None, *, draft
) -> tuple[dict[str, dict[str, Any]], list[Prompt], Any]:
    """Everything about the run ``config`` (a BenchConfig) describes that can be checked before a
    model is loaded. ``prompts``: given ready-made, else loaded as the config says; ``draft``:
    the draft model or its name, None for none. Returns each method's parsed options, the
    prompts, and the sampling settings (without a seed)."""
    from specdecode.sampling import MAX_SEED, SamplingConfig

    options = validate_methods(list(config.methods), config.method_options, draft=draft)
    if config.max_new_tokens < 1:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}")
    if config.warmup < 0:
        raise SpecDecodeError(f"--warmup must be >= 0, got {config.warmup}")
    sampling = SamplingConfig(
        temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, coupling=config.coupling
    )
    from specdecode.strategies import is_strategy

    greedy_only = [m for m in config.methods if is_strategy(m)]
    if greedy_only and not sampling.greedy:
        raise SpecDecodeError(f"{', '.join(greedy_only)} decode greedily: run them with --temperature 0")
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
    return options, prompts, sampling


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
