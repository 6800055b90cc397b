"""Statistical losslessness checks shared by the tests of every drafter.

The engine's first new token comes from the prefill, so a drafter first acts on new tokens
2 and 3. We compare the empirical joint distribution of (token 2, token 3) over many seeded
generations with the exact one, enumerated from the target on a tiny vocabulary, by a
chi-square test. A sound method passes at any reasonable significance; a wrong acceptance
rule fails by a wide margin (see test_verify.py).
"""

from __future__ import annotations

import itertools
from collections import Counter

import torch

from specdecode.sampling import SamplingConfig, target_probs


@torch.inference_mode()
def exact_joint(loaded, prompt: list[int], cfg: SamplingConfig) -> dict[tuple[int, int], float]:
    """P(new token 2 = a, new token 3 = b) under plain sampling with ``cfg``."""
    model = loaded.model
    vocab = model.config.vocab_size

    def probs(ids):
        logits = model(torch.tensor([ids])).logits[0, -1]
        return target_probs(logits, cfg)

    joint: dict[tuple[int, int], float] = {}
    p1 = probs(prompt)
    for t1 in range(vocab):
        if p1[t1] == 0:
            continue
        p2 = probs(prompt + [t1])
        for t2 in range(vocab):
            if p2[t2] == 0:
                continue
            p3 = probs(prompt + [t1, t2])
            for t3 in range(vocab):
                w = float(p1[t1] * p2[t2] * p3[t3])
                if w:
                    joint[(t2, t3)] = joint.get((t2, t3), 0.0) + w
    return joint


def sample_joint(
    decoder, prompt: list[int], cfg: SamplingConfig, n: int, coupling: str = "residual"
) -> Counter:
    """``n`` generations, seeds ``0 .. n - 1``. The default tests speculative sampling proper
    (``residual``); ``coupling="gumbel"`` tests the seed-keyed Gumbel-max coupling."""
    counts: Counter = Counter()
    for seed in range(n):
        c = SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p, seed=seed, coupling=coupling)
        ids = decoder.generate_ids(prompt, max_new_tokens=3, sampling=c).token_ids
        counts[(ids[1], ids[2])] += 1
    return counts


def chi_square_pvalue(counts: Counter, probs: dict, min_expected: float = 5.0) -> float:
    """Pearson's chi-square goodness of fit; cells with small expectation are pooled."""
    n = sum(counts.values())
    keys = set(probs) | set(counts)
    unexpected = sum(counts[k] for k in keys if probs.get(k, 0.0) == 0.0)
    if unexpected:
        return 0.0  # an outcome the target can never produce
    stat, df, pool_obs, pool_exp = 0.0, 0, 0.0, 0.0
    for k in sorted(keys, key=lambda k: probs.get(k, 0.0)):
        e = probs[k] * n
        if e < min_expected:
            pool_obs += counts[k]
            pool_exp += e
            continue
        stat += (counts[k] - e) ** 2 / e
        df += 1
    if pool_exp > 0:
        stat += (pool_obs - pool_exp) ** 2 / pool_exp
        df += 1
    df -= 1
    if df <= 0:
        return 1.0
    return float(
        torch.special.gammaincc(
            torch.tensor(df / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)
        )
    )


def all_pairs(vocab: int):
    return itertools.product(range(vocab), repeat=2)
