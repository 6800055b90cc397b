"""Target scoring of trees in one forward, and the KV cache after a commit."""

import pytest
import torch
from transformers import DynamicCache

from specdecode.models.testing import tiny_model_for_tests
from specdecode.target import Target, cache_argument
from specdecode.tree import DraftTree

PROMPT = [4, 9, 2, 7, 7, 1]
TREE = DraftTree([3, 8, 5, 2, 6, 6], [-1, -1, 0, 0, 2, 1])


@pytest.fixture(scope="module")
def lm():
    return tiny_model_for_tests(vocab_size=32, seed=3, eos_token_id=None)


def plain_logits(lm, ids):
    with torch.inference_mode():
        return lm.model(torch.tensor([ids])).logits[0, -1]


def plain_cache(lm, ids):
    cache = DynamicCache(config=lm.model.config)
    with torch.inference_mode():
        lm.model(torch.tensor([ids]), use_cache=True, **{cache_argument(lm.model): cache})
    return cache


def test_tree_logits_equal_decoding_each_path_alone(lm):
    t = Target(lm)
    t.prefill(PROMPT[:-1])
    logits = t.score(PROMPT[-1], TREE)
    assert logits.shape == (len(TREE) + 1, 32)
    torch.testing.assert_close(logits[0], plain_logits(lm, PROMPT), atol=1e-4, rtol=0)
    for i in range(len(TREE)):
        ids = PROMPT + [TREE.tokens[j] for j in TREE.path_to(i)]
        torch.testing.assert_close(logits[i + 1], plain_logits(lm, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("path", [[], [0], [1], [0, 2, 4], [1, 5], [0, 3]])
def test_cache_after_partial_acceptance_equals_plain_decoding(lm, path):
    t = Target(lm)
    t.prefill(PROMPT[:-1])
    t.score(PROMPT[-1], TREE)
    t.commit(path)
    ref = plain_cache(lm, PROMPT + [TREE.tokens[i] for i in path])
    assert t.length == len(PROMPT) + len(path)
    for ours, theirs in zip(t.cache.layers, ref.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=0)
    # and decoding goes on from it exactly as from the plain cache
    nxt = t.score(5, DraftTree.empty())[0]
    torch.testing.assert_close(
        nxt, plain_logits(lm, PROMPT + [TREE.tokens[i] for i in path] + [5]), atol=1e-4, rtol=0
    )


def test_chain_all_accepted_keeps_every_row(lm):
    """The bonus-token off-by-one: with every draft accepted, the cache holds root + all drafts,
    and the bonus token (not yet fed) becomes the next root."""
    chain = DraftTree.chain([3, 8, 5])
    t = Target(lm)
    t.prefill(PROMPT[:-1])
    t.score(PROMPT[-1], chain)
    t.commit([0, 1, 2])
    assert t.length == len(PROMPT) + 3


def test_crop(lm):
    t = Target(lm)
    t.prefill(PROMPT)
    t.crop(3)
    assert t.length == 3
