"""Target scoring of trees in one forward, and the KV cache adapter under it (crop, keep, and
the up-front refusal of caches that cannot drop rows)."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, MambaConfig, MistralConfig

from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.kvcache import KVCache, cache_argument, kv_cache
from specdecode.models.testing import tiny_model_for_tests
from specdecode.target import Target
from specdecode.tree import DraftTree

PROMPT = [4, 9, 2, 7, 7, 1]
TREE = DraftTree([3, 8, 5, 2, 6, 6], [-1, -1, 0, 0, 2, 1])
PATHS = [[], [0], [1], [0, 2, 4], [1, 5], [0, 3]]


@pytest.fixture(scope="module")
def lm():
    return tiny_model_for_tests(vocab_size=32, seed=3, eos_token_id=None)


def with_model(lm, config, attention="sdpa"):
    """``lm`` with a tiny random model of another architecture built from ``config``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()
    return dataclasses.replace(lm, model=model, key=type(config).__name__)


def plain_logits(lm, ids):
    with torch.inference_mode():
        return lm.model(torch.tensor([ids])).logits[0, -1]


def plain_cache(lm, ids):
    cache = DynamicCache(config=lm.model.config)
    with torch.inference_mode():
        lm.model(torch.tensor([ids]), use_cache=True, **{cache_argument(lm.model): cache})
    return cache


def assert_plain(lm, t: Target, ids):
    """``t``'s cache holds what plain decoding of ``ids`` caches, and decoding goes on from it
    exactly as from the plain cache."""
    cache: KVCache = t.cache
    assert t.length == cache.length == len(ids)
    for ours, theirs in zip(cache.hf_cache.layers, plain_cache(lm, ids).layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=0)
    nxt = t.score(5, DraftTree.empty())[0]
    torch.testing.assert_close(nxt, plain_logits(lm, ids + [5]), atol=1e-4, rtol=0)


def test_tree_logits_equal_decoding_each_path_alone(lm):
    t = Target(lm)
    t.prefill(PROMPT[:-1])
    logits = t.score(PROMPT[-1], TREE)
    assert logits.shape == (len(TREE) + 1, 32)
    torch.testing.assert_close(logits[0], plain_logits(lm, PROMPT), atol=1e-4, rtol=0)
    for i in range(len(TREE)):
        ids = PROMPT + [TREE.tokens[j] for j in TREE.path_to(i)]
        torch.testing.assert_close(logits[i + 1], plain_logits(lm, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_cache_after_partial_acceptance_equals_plain_decoding(lm, path):
    """KVCache.keep: the accepted rows of a tree compacted behind the root."""
    t = Target(lm)
    t.prefill(PROMPT[:-1])
    t.score(PROMPT[-1], TREE)
    t.commit(path)
    assert_plain(lm, t, PROMPT + [TREE.tokens[i] for i in path])


@pytest.mark.parametrize("accepted", [0, 1, 3])
def test_cache_after_a_chain_equals_plain_decoding(lm, accepted):
    """KVCache.crop: the rejected tail of a chain cut off."""
    chain = DraftTree.chain([3, 8, 5, 2])
    t = Target(lm)
    t.prefill(PROMPT[:-1])
    t.score(PROMPT[-1], chain)
    t.commit(list(range(accepted)))
    assert_plain(lm, t, PROMPT + chain.tokens[:accepted])


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


def test_a_cache_that_cannot_drop_rows_is_refused_up_front(lm):
    config = MambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, state_size=4)
    mamba = with_model(lm, config, attention="eager")
    expected = "MambaForCausalLM's KV cache \\(DynamicCache with LinearAttentionLayer layers\\) cannot drop"
    with pytest.raises(SpecDecodeError, match=expected):
        kv_cache(mamba.model)
    with pytest.raises(SpecDecodeError, match=expected):
        Target(mamba).prefill(PROMPT)  # before any forward
    with pytest.raises(SpecDecodeError, match=expected):
        build_decoder("draft-model", lm, draft=mamba)  # a draft: when the decoder is built


def test_a_sliding_window_cache_drops_rows_inside_its_window_only(lm):
    config = MistralConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
    )  # fmt: skip
    mistral = with_model(lm, config)
    t = Target(mistral)
    t.prefill(PROMPT[:-1])
    assert t.cache.limit == 15  # a sliding layer keeps the window less one
    t.score(PROMPT[-1], TREE)  # 12 rows: inside the window
    t.commit([0, 2, 4])
    ids = PROMPT + [TREE.tokens[i] for i in [0, 2, 4]]
    assert_plain(mistral, t, ids)  # and feeds token 5: 10 rows
    t.commit([])
    with pytest.raises(SpecDecodeError, match="sliding-window KV cache keeps"):
        t.score(5, TREE)  # 17 rows: the rejected ones could not be dropped again
    assert t.length == len(ids) + 1  # refused before the forward
    for _ in range(10):  # plain decoding drops nothing and goes on past the window
        t.score(5, DraftTree.empty())
        t.commit([])
    assert t.length == len(ids) + 11
