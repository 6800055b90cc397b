"""The benchmark: every method side by side with plain ``transformers`` in the same run.

- :mod:`~specdecode.bench.datasets`: prompt sets (embedded Spec-Bench, any JSONL file);
- :mod:`~specdecode.bench.baselines`: ``hf-ar``, ``hf-pld``, ``hf-assisted`` through ``generate()``;
- :mod:`~specdecode.bench.runner`: the run: warm-up, then every prompt through every method;
- :mod:`~specdecode.bench.checks`: what is checked before a model is loaded;
- :mod:`~specdecode.bench.measure`: runners, timing, peak memory, the identity check;
- :mod:`~specdecode.bench.results`: the result dict and its files (JSON, Markdown, plots);
- :mod:`~specdecode.bench.metrics`: pure aggregation (tokens/s, speedup, acceptance, identity);
- :mod:`~specdecode.bench.report` and :mod:`~specdecode.bench.plots`: Markdown, compare, PNGs.

Importing this package does not import torch; the runner and baselines do.
"""

__all__ = ["BenchConfig", "run_bench"]


def __getattr__(name):
    if name in __all__:
        from specdecode.bench import runner

        return getattr(runner, name)
    raise AttributeError(name)
