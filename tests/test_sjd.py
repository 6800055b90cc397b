"""``sjd``: greedy output equals plain decoding; sampling is lossless, and the check has teeth.

``lossless.sample_joint`` generates 3 new tokens, so the drafter only ever acts once, at new
token 2, with room for one node: for SJD that is the first proposal of a prompt, whose guess is
deterministic. Sampling 4 new tokens instead leaves room for a chain at token 2 and, after a
rejection, a second proposal at token 3 made of *sampled* Jacobi guesses with their ``q``; the
joint of tokens 2 and 3 is the same, so the exact distribution still applies.
"""

from collections import Counter

import pytest
import torch

from lossless import chi_square_pvalue, exact_joint
from specdecode.drafters.base import MethodContext
from specdecode.drafters.sjd import SpeculativeJacobi
from specdecode.engine import Decoder, build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.tree import DraftTree

PROMPTS = [
    [3, 5, 7, 3, 5, 7, 3, 5, 7, 3],
    [4, 8, 15, 16, 23, 42, 4, 8, 15, 16],
    [9, 9, 9, 9, 9, 9],
    [2, 11, 30, 17, 6],
]
PROMPT = [3, 5, 3, 5, 3]
CFG = SamplingConfig(temperature=1.0)


@pytest.fixture(scope="module")
def peaky():
    return tiny_model_for_tests(vocab_size=48, seed=3, initializer_range=0.3)


@pytest.fixture(scope="module")
def small():
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    return lm, exact_joint(lm, PROMPT, CFG)


def sample_joint_4(decoder, n: int) -> tuple[Counter, int]:
    """Counts of (new token 2, new token 3) over ``n`` seeded 4-token generations, and how many
    target forwards scored sampled (non one-hot) Jacobi guesses."""
    counts: Counter = Counter()
    drafter = decoder.drafter
    sampled = 0
    propose = drafter.propose

    def spy(tokens, max_depth):
        nonlocal sampled
        tree = propose(tokens, max_depth)
        if tree.draft_probs is not None and len(tree) and float(tree.draft_probs.max(-1).values.min()) < 1:
            sampled += 1
        return tree

    drafter.propose = spy
    try:
        for seed in range(n):
            # the residual coupling: the one whose losslessness depends on q (gumbel's does not)
            c = SamplingConfig(CFG.temperature, seed=seed, coupling="residual")
            ids = decoder.generate_ids(PROMPT, max_new_tokens=4, sampling=c).token_ids
            counts[(ids[1], ids[2])] += 1
    finally:
        del drafter.propose
    return counts, sampled


@pytest.mark.parametrize("options", [{}, {"window": 3, "budget": 3}, {"window": 1}])
def test_greedy_equals_ar(peaky, options):
    ar = build_decoder("ar", peaky)
    sjd = build_decoder("sjd", peaky, options=options)
    for prompt in PROMPTS:
        want = ar.generate_ids(prompt, max_new_tokens=40).token_ids
        assert sjd.generate_ids(prompt, max_new_tokens=40).token_ids == want


def test_repetitive_text_is_accepted(peaky):
    sjd = build_decoder("sjd", peaky, options={"budget": 6})
    ar = build_decoder("ar", peaky)
    prompt = PROMPTS[0] * 3
    got = sjd.generate_ids(prompt, max_new_tokens=60)
    assert got.token_ids == ar.generate_ids(prompt, max_new_tokens=60).token_ids
    assert got.mean_accepted > 1.0


def test_seeded_sampling_is_reproducible(peaky):
    sjd = build_decoder("sjd", peaky)
    cfg = SamplingConfig(temperature=1.0, seed=7)
    a = sjd.generate_ids(PROMPTS[1], max_new_tokens=30, sampling=cfg).token_ids
    b = sjd.generate_ids(PROMPTS[1], max_new_tokens=30, sampling=cfg).token_ids
    assert a == b


def test_sampling_is_lossless(small):
    lm, exact = small
    counts, sampled = sample_joint_4(build_decoder("sjd", lm), 1500)
    assert sampled > 100  # the test does reach the sampled guesses
    assert chi_square_pvalue(counts, exact) > 1e-3


class OffByOneQ(SpeculativeJacobi):
    """A bookkeeping bug: each guess claims the ``q`` of the guess after it."""

    def propose(self, tokens, max_depth):
        tree = super().propose(tokens, max_depth)
        q = tree.draft_probs
        if q is None or len(tree) < 2:
            return tree
        return DraftTree.chain(tree.tokens, torch.cat([q[1:], q[-1:]]))


class FlatQ(SpeculativeJacobi):
    """Claims a uniform ``q`` for tokens that were sampled from the target's stale distribution.

    (Claiming a one-hot ``q`` would not do: a deterministic draft's rule is lossless for any token
    chosen independently of the verifier's coins, sampled ones included; it only accepts less.)
    """

    def propose(self, tokens, max_depth):
        tree = super().propose(tokens, max_depth)
        if tree.draft_probs is None:
            return tree
        flat = torch.full_like(tree.draft_probs, 1.0 / tree.draft_probs.shape[-1])
        return DraftTree.chain(tree.tokens, flat)


@pytest.mark.parametrize("wrong", [OffByOneQ, FlatQ])
def test_a_wrong_q_fails_the_check(small, wrong):
    lm, exact = small
    decoder = Decoder("sjd", lm, wrong(MethodContext(lm)))
    counts, _ = sample_joint_4(decoder, 400)
    assert chi_square_pvalue(counts, exact) < 1e-6
