"""``hybrid``: train-free drafters merged into one tree; lossless, merged without duplicates,
each source learning from its own nodes."""

import pytest

from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

PROMPTS = [
    [3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5],
    [10, 11, 12, 13, 14, 15, 10, 11, 12],
    [40, 2, 9],
]


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path_factory, monkeypatch):
    """Tiny-model tests see no cached latency curve and write nothing to the user's cache."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def peaky():
    return tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3)


def spy(decoder):
    trees = []
    propose = decoder.drafter.propose

    def wrapped(tokens, max_depth):
        tree = propose(tokens, max_depth)
        trees.append(tree)
        assert len(tree) == 0 or max(tree.depths()) <= max_depth
        for node in range(-1, len(tree)):  # merged: no two siblings hold the same token
            kids = [tree.tokens[c] for c in tree.children(node)]
            assert len(kids) == len(set(kids))
        return tree

    decoder.drafter.propose = wrapped
    return trees


@pytest.mark.parametrize(
    "options",
    [{}, {"sources": "pld,recycling"}, {"sources": "aded,recycling", "budget": 8}, {"budget": 3}],
)
def test_greedy_equals_ar(peaky, options):
    ar = build_decoder("ar", peaky)
    hybrid = build_decoder("hybrid", peaky, options=options)
    trees = spy(hybrid)
    accepted = []
    for prompt in PROMPTS:
        want = ar.generate_ids(prompt, max_new_tokens=48).token_ids
        got = hybrid.generate_ids(prompt, max_new_tokens=48)
        assert got.token_ids == want
        accepted.append(got.mean_accepted)
    assert max(accepted) > 1.05
    assert any(len(t) and not t.is_chain for t in trees)
    if options.get("budget"):
        assert max(len(t) for t in trees) == options["budget"]


def test_a_path_proposed_by_two_sources_is_one_node(peaky):
    hybrid = build_decoder("hybrid", peaky, options={"sources": "pld,aded", "budget": 64})
    drafter = hybrid.drafter
    tokens = [3, 5, 7, 3, 5, 7, 3, 5]
    for source in drafter.sources:
        source.begin(tokens, SamplingConfig())
    # Both sources continue "3 5" with 7 (pld copies it, the tri-gram counts saw it twice).
    pld, aded = (s.candidates(tokens, 4) for s in drafter.sources)
    assert pld.tokens[0] == 7 and 7 in [t for t, p in zip(aded.tokens, aded.parents, strict=True) if p < 0]
    for source in drafter.sources:
        source.begin(tokens, SamplingConfig())
    tree = drafter.propose(tokens, 4)
    assert [tree.tokens[c] for c in tree.children(-1)].count(7) == 1
    seven = [c for c in tree.children(-1) if tree.tokens[c] == 7][0]
    assert {s for s, _ in drafter._owners[seven]} == {0, 1}  # both sources own it


def test_each_source_learns_from_its_own_nodes(peaky):
    hybrid = build_decoder("hybrid", peaky, options={"sources": "pld,recycling"})
    pld, recycling = hybrid.drafter.sources
    before_pld = {m: list(r.rates) for m, r in pld.rates.items()}
    before_rec = list(recycling.rates.offered)
    hybrid.generate_ids(PROMPTS[0], max_new_tokens=32)
    assert any(list(r.rates) != before_pld[m] for m, r in pld.rates.items())
    assert recycling.rates.offered != before_rec
    assert (recycling.rows >= 0).any()  # rows recycled from the scored nodes


def test_sampling_is_lossless():
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    prompt = [3, 5, 3, 5, 3]
    cfg = SamplingConfig(temperature=1.0)
    hybrid = build_decoder("hybrid", lm, options={"sources": "pld,aded,recycling", "budget": 6})
    trees = spy(hybrid)
    counts = sample_joint(hybrid, prompt, cfg, 2000)
    assert sum(len(t) for t in trees) > 2000
    assert any(not t.is_chain for t in trees)
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


@pytest.mark.parametrize(
    ("sources", "message"),
    [("", "empty"), ("pld,lookahead", "cannot be a source"), ("pld,pld", "named twice")],
)
def test_bad_sources(peaky, sources, message):
    with pytest.raises(SpecDecodeError, match=message):
        build_decoder("hybrid", peaky, options={"sources": sources})


@pytest.mark.real_model
def test_real_model_greedy_equals_ar(default_model):
    ids = default_model.encode_prompt("Summarize: The cat sat on the mat. The cat was happy on the mat.")
    want = build_decoder("ar", default_model).generate_ids(ids, max_new_tokens=64).token_ids
    got = build_decoder("hybrid", default_model).generate_ids(ids, max_new_tokens=64)
    assert got.token_ids == want
    assert got.mean_accepted > 1.0
