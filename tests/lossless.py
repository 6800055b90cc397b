"""The statistical losslessness checks, kept importable as ``lossless`` by the drafter tests;
they live in :mod:`specdecode.lossless` (the ``audit`` command uses them too)."""

from specdecode.lossless import all_pairs, chi_square_pvalue, exact_joint, sample_joint

__all__ = ["all_pairs", "chi_square_pvalue", "exact_joint", "sample_joint"]
