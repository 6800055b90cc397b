"""Statistical checks that a method samples from the target's distribution.

The engine's first new token comes from the prefill, so a drafter first acts on new tokens
2 and 3. Two ways to compare what a method samples there with what the target says:

- On a tiny vocabulary (the tests), :func:`exact_joint` enumerates the exact joint
  distribution of (token 2, token 3) and :func:`sample_joint` counts what a decoder gives.
- On a real vocabulary, where the joint cannot be enumerated, :class:`PrefixCells` partitions
  the outcomes (token 1, ..., token L) into cells whose exact probabilities come from the
  target's next-token distributions after the likely prefixes; unlikely outcomes are pooled
  into "this prefix, then something else" cells. The partition is a function of the target
  alone (never of the samples), so Pearson's test on it is a valid goodness-of-fit test.
- For longer samples, :func:`pit_values`: each token's randomized probability integral
  transform under the target's conditional distribution given the sample's own prefix
  (Rosenblatt's transform). A sequence drawn from the target gives independent uniform values,
  and only such a sequence does, so :func:`uniformity` tests every position at once.

:func:`chi_square_pvalue` is Pearson's chi-square goodness of fit, cells with a small
expectation pooled. A sound method passes at any reasonable significance; a wrong acceptance
rule fails by a wide margin (see tests/test_verify.py and tests/test_audit.py).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import torch

from specdecode.sampling import SamplingConfig, target_probs


def chi_square(counts: Counter, probs: dict, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's chi-square goodness of fit of ``counts`` to ``probs``: ``(statistic, df, p-value)``.

    Cells expected fewer than ``min_expected`` times are pooled into one. An observed outcome
    of probability 0 gives p-value 0 (the target can never produce it).
    """
    n = sum(counts.values())
    keys = set(probs) | set(counts)
    if any(counts[k] for k in keys if probs.get(k, 0.0) == 0.0):
        return float("inf"), 0, 0.0
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
        return stat, 0, 1.0
    p = torch.special.gammaincc(
        torch.tensor(df / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)
    )
    return stat, df, float(p)


def chi_square_pvalue(counts: Counter, probs: dict, min_expected: float = 5.0) -> float:
    """The p-value of :func:`chi_square`."""
    return chi_square(counts, probs, min_expected)[2]


# ---- tiny vocabularies: the exact joint, enumerated ------------------------------------------
@torch.inference_mode()
def exact_joint(loaded, prompt: list[int], cfg: SamplingConfig) -> dict[tuple[int, int], float]:
    """P(new token 2 = a, new token 3 = b) under plain sampling with ``cfg`` (tiny vocabularies)."""
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


def all_pairs(vocab: int):
    return itertools.product(range(vocab), repeat=2)


# ---- real vocabularies: a partition defined by the target alone -------------------------------
NextProbs = Callable[[list[tuple[int, ...]]], torch.Tensor]  # prefixes -> [len, vocab] probabilities


class PrefixCells:
    """A partition of the outcomes ``(t_1, ..., t_depth)`` into cells of known probability.

    Built level by level from ``next_probs`` (the target's next-token distribution after each
    prefix): a prefix is *expanded* when ``n`` samples are expected to reach it at least
    ``min_expected`` times; below an expanded prefix each likely token is a cell (at the last
    level) or a prefix to expand, and the rest of the prefix's mass is one cell, "this prefix,
    then another token". Every outcome falls in exactly one cell, and the cells' probabilities
    sum to 1. Nothing here looks at the samples: the partition is fixed before they are counted.
    """

    def __init__(self, next_probs: NextProbs, n: int, depth: int, min_expected: float = 5.0) -> None:
        if depth < 1 or n < 1:
            raise ValueError("depth and n must be >= 1")
        self.depth = depth
        self.probs: dict[Hashable, float] = {}  # cell -> null probability
        self.expanded: set[tuple[int, ...]] = set()
        self._zero: dict[tuple[int, ...], torch.Tensor] = {}  # prefix -> tokens of probability 0
        self.forwards = 0  # prefixes whose next-token distribution was computed
        frontier: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
        for level in range(depth):
            if not frontier:
                break
            rows = next_probs([pre for pre, _ in frontier]).double()  # [len(frontier), vocab]
            self.forwards += len(frontier)
            grown: list[tuple[tuple[int, ...], float]] = []
            for (pre, mass), row in zip(frontier, rows, strict=True):
                self.expanded.add(pre)
                row = row / row.sum()
                self._zero[pre] = row == 0
                w = mass * row  # [vocab]: null probability of each one-token extension
                likely = w * n >= min_expected  # [vocab]
                for tok in likely.nonzero().flatten().tolist():
                    if level == depth - 1:
                        self.probs[(*pre, tok)] = float(w[tok])
                    else:
                        grown.append(((*pre, tok), float(w[tok])))
                self.probs[("rest", pre)] = float(w[~likely].sum())
            frontier = grown

    def cell(self, outcome: Sequence[int]) -> Hashable:
        """The cell of ``outcome`` (its first ``depth`` tokens), or ``None`` when the target
        gives it probability 0 (seen where the prefix was expanded)."""
        pre: tuple[int, ...] = ()
        for level, tok in enumerate(outcome[: self.depth]):
            if self._zero[pre][tok]:
                return None
            nxt = (*pre, tok)
            if level == self.depth - 1:
                return nxt if nxt in self.probs else ("rest", pre)
            if nxt not in self.expanded:
                return ("rest", pre)
            pre = nxt
        raise ValueError(f"an outcome needs {self.depth} tokens, got {len(outcome)}")

    def test(self, outcomes: Sequence[Sequence[int]], min_expected: float = 5.0) -> tuple[float, int, float]:
        """Chi-square of ``outcomes`` against the cells: ``(statistic, df, p-value)``."""
        counts: Counter = Counter()
        for o in outcomes:
            c = self.cell(o)
            if c is None:
                return float("inf"), 0, 0.0
            counts[c] += 1
        return chi_square(counts, self.probs, min_expected)


@torch.inference_mode()
def model_next_probs(loaded, prompt: list[int], cfg: SamplingConfig, batch: int = 16) -> NextProbs:
    """``next_probs`` for :class:`PrefixCells` from plain full forwards of ``loaded``'s model over
    ``prompt + prefix`` (no KV cache, no tree mask: the plainest computation of ``p``)."""
    model, device = loaded.model, loaded.device

    def next_probs(prefixes: list[tuple[int, ...]]) -> torch.Tensor:
        rows = []
        for i in range(0, len(prefixes), batch):
            ids = torch.tensor([prompt + list(p) for p in prefixes[i : i + batch]], device=device)
            with torch.inference_mode():
                logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()  # [b, vocab]
            rows.append(target_probs(logits, cfg).cpu())
        return torch.cat(rows)

    return next_probs


def pit_values(probs: torch.Tensor, tokens: Sequence[int], gen: torch.Generator) -> list[float] | None:
    """The randomized probability integral transform of ``tokens`` under ``probs`` ``[T, vocab]``
    (row ``t``: the distribution token ``t`` was to be drawn from, given the tokens before it).

    Tokens are ordered by decreasing probability (ties by id), and ``u_t = F_t(x_t^-) + v_t
    p_t(x_t)`` with ``v_t`` uniform: likely tokens give small values. When the tokens follow
    ``probs`` the values are independent and uniform on [0, 1). None when a token has
    probability 0 (the target can never produce it).
    """
    probs = probs.double()
    x = torch.tensor(list(tokens), device=probs.device)  # [T]
    p_x = probs.gather(1, x[:, None])  # [T, 1]
    if bool((p_x <= 0).any()):
        return None
    ids = torch.arange(probs.shape[-1], device=probs.device)
    before = (probs > p_x) | ((probs == p_x) & (ids[None] < x[:, None]))  # [T, vocab]
    lower = (probs * before).sum(-1)  # [T]
    v = torch.rand(len(x), generator=gen, dtype=torch.float64).to(probs.device)
    return (lower + v * p_x[:, 0]).clamp(0, 1 - 1e-12).tolist()


def uniformity(
    values: Sequence[float], bins: int = 20, min_expected: float = 5.0
) -> tuple[float, int, float]:
    """Pearson's chi-square of ``values`` against the uniform distribution on ``bins`` equal bins
    (fewer when there are too few values for ``min_expected`` per bin): ``(statistic, df, p)``."""
    bins = max(2, min(bins, int(len(values) / min_expected)))
    counts = Counter(min(int(u * bins), bins - 1) for u in values)
    return chi_square(counts, {b: 1.0 / bins for b in range(bins)}, min_expected=0.0)


# ---- negative control --------------------------------------------------------------------------
def verify_without_residual(tree, logits, cfg, gen=None, *, noise=None, position=0):
    """A deliberately wrong verifier, the negative control of the sampling checks: after a
    rejected draft token it samples from p instead of the residual norm(max(0, p - q)), the
    classic speculative-sampling bug. Greedy decoding and the Gumbel coupling never use the
    rule, so they go to :func:`specdecode.verify.verify` unchanged. Patched over
    ``specdecode.engine.verify``, a sound check must fail (tests/test_audit.py,
    benchmarks/audit/negative_control.py)."""
    from specdecode.verify import Verdict, verify

    if cfg.greedy or noise is not None:
        return verify(tree, logits, cfg, gen, noise=noise, position=position)
    p_all, node, path = target_probs(logits, cfg), -1, []
    while True:
        p = p_all[node + 1]
        for child in tree.children(node):
            x = tree.tokens[child]
            q_x = 1.0 if tree.draft_probs is None else float(tree.draft_probs[child][x])
            if float(torch.rand((), generator=gen)) * q_x < float(p[x]):
                path.append(child)
                node = child
                break
        else:
            resampled = int(torch.multinomial(p, 1, generator=gen))
            return Verdict(path, [tree.tokens[i] for i in path] + [resampled])
