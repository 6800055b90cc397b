"""The benchmark: every method side by side with plain ``transformers`` in the same run.

- :mod:`~specdecode.bench.datasets`: prompt sets (embedded Spec-Bench, any JSONL file);
- :mod:`~specdecode.bench.baselines`: ``hf-ar``, ``hf-pld``, ``hf-assisted`` through ``generate()``;
- :mod:`~specdecode.bench.runner`: warm-up, interleaving, timing, identity check, output files;
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
