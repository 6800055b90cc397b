"""The verifier on hand-built logits: greedy tables and statistical losslessness."""

from collections import Counter

import pytest
import torch

from lossless import chi_square_pvalue
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.tree import DraftTree
from specdecode.verify import Verdict, verify, verify_greedy, verify_sampling

V = 6


def onehot_logits(best: list[int]) -> torch.Tensor:
    logits = torch.zeros(len(best), V)
    logits[torch.arange(len(best)), torch.tensor(best)] = 5.0
    return logits


GREEDY_CASES = [
    # (tokens, parents, target argmax after [root, node 0, node 1, ...], path, committed tokens)
    ([], [], [3], [], [3]),  # no draft: just the target's token
    ([1, 2, 3], [-1, 0, 1], [1, 2, 3, 4], [0, 1, 2], [1, 2, 3, 4]),  # all accepted + bonus
    ([1, 2, 3], [-1, 0, 1], [5, 2, 3, 4], [], [5]),  # first rejected: the target's token
    ([1, 2, 3], [-1, 0, 1], [1, 0, 3, 4], [0], [1, 0]),  # exactly one accepted
    ([1, 2, 3, 4], [-1, -1, 0, 1], [2, 0, 4, 0, 5], [1, 3], [2, 4, 5]),  # second branch wins
    ([1, 2, 3, 4], [-1, -1, 0, 0], [1, 4, 0, 0, 0], [0, 3], [1, 4, 0]),  # second child of node 0
]


@pytest.mark.parametrize(("tokens", "parents", "best", "path", "committed"), GREEDY_CASES)
def test_greedy_table(tokens, parents, best, path, committed):
    tree = DraftTree(tokens, parents)
    for fn in (verify_greedy, lambda t, lg: verify(t, lg, SamplingConfig())):
        v = fn(tree, onehot_logits(best))
        assert v.path == path and v.tokens == committed and v.accepted == len(path)


# ---- sampling ---------------------------------------------------------------------------
torch.manual_seed(0)
P0 = torch.distributions.Dirichlet(torch.ones(V)).sample()
P1 = torch.distributions.Dirichlet(torch.ones(V) * 0.7).sample((V,))  # p(second | first)
Q0 = torch.distributions.Dirichlet(torch.ones(V)).sample()
Q1 = torch.distributions.Dirichlet(torch.ones(V)).sample((V,))


def exact():
    return {(a, b): float(P0[a] * P1[a, b]) for a in range(V) for b in range(V)}


def build(shape: str, gen: torch.Generator) -> DraftTree:
    """A random draft of the given shape, drawn from q."""

    def draw(q, k, replace=True):
        return torch.multinomial(q, k, replacement=replace, generator=gen).tolist()

    if shape == "chain":
        a = draw(Q0, 1)[0]
        b = draw(Q1[a], 1)[0]
        return DraftTree.chain([a, b], torch.stack([Q0, Q1[a]]))
    if shape in ("tree", "tree-no-replacement"):
        replace = shape == "tree"
        kids = draw(Q0, 3, replace)
        tokens, parents, rows = list(kids), [-1, -1, -1], [Q0, Q0, Q0]
        for i, a in enumerate(kids):
            tokens.append(draw(Q1[a], 1)[0])
            parents.append(i)
            rows.append(Q1[a])
        return DraftTree(tokens, parents, torch.stack(rows), without_replacement=not replace)
    if shape == "deterministic":  # the draft's top tokens, no probabilities: one-hot q
        kids = Q0.topk(2).indices.tolist()
        return DraftTree(kids + [int(Q1[kids[0]].argmax())], [-1, -1, 0])
    raise ValueError(shape)


def target_rows(tree: DraftTree) -> torch.Tensor:
    """The target's probabilities after the root and after each node (only depth <= 1 matters)."""
    rows = [P0]
    for i in range(len(tree)):
        rows.append(P1[tree.tokens[i]] if tree.parents[i] == -1 else torch.full((V,), 1.0 / V))
    return torch.stack(rows)


def run(shape: str, verifier, n: int = 12000) -> Counter:
    gen = torch.Generator().manual_seed(1)
    counts: Counter = Counter()
    for _ in range(n):
        tree = build(shape, gen)
        v: Verdict = verifier(tree, target_rows(tree), gen)
        a = v.tokens[0]
        # a step that committed one token is followed by plain sampling, which is exact
        b = v.tokens[1] if len(v.tokens) > 1 else int(torch.multinomial(P1[a], 1, generator=gen))
        counts[(a, b)] += 1
    return counts


@pytest.mark.parametrize("shape", ["chain", "tree", "tree-no-replacement", "deterministic"])
def test_speculative_sampling_reproduces_the_target_distribution(shape):
    assert chi_square_pvalue(run(shape, verify_sampling), exact()) > 1e-3


def wrong_verifier(tree, p_all, gen):
    """A classic bug: on rejection, resample from p instead of the residual norm(max(0, p - q))."""
    node, path = -1, []
    while True:
        kids = tree.children(node)
        p = p_all[node + 1]
        for child in kids:
            x = tree.tokens[child]
            q = tree.draft_probs[child] if tree.draft_probs is not None else None
            q_x = 1.0 if q is None else float(q[x])
            if float(torch.rand((), generator=gen)) * q_x < float(p[x]):
                path.append(child)
                node = child
                break
        else:
            return Verdict(
                path, [tree.tokens[i] for i in path] + [int(torch.multinomial(p, 1, generator=gen))]
            )


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_the_statistical_test_catches_a_wrong_rule(shape):
    assert chi_square_pvalue(run(shape, wrong_verifier), exact()) < 1e-6


def test_top_k_and_top_p_shape_the_target_distribution():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    torch.testing.assert_close(p, torch.tensor([2 / 3, 1 / 3, 0, 0]))
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(p, torch.tensor([2 / 3, 1 / 3, 0, 0]))
    p = target_probs(logits, SamplingConfig(temperature=1.0, top_p=0.5))
    torch.testing.assert_close(p, torch.tensor([1.0, 0, 0, 0]))
