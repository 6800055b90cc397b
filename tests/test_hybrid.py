"""``hybrid``: train-free drafters merged into one tree; lossless, merged without duplicates,
each source learning from its own nodes."""

import pytest

from drafting import PROMPTS, check_greedy_equals_ar, spy
from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.mark.parametrize(
    "options",
    [{}, {"sources": "pld,recycling"}, {"sources": "aded,recycling", "budget": 8}, {"budget": 3}],
)
def test_greedy_equals_ar(peaky, options):
    check_greedy_equals_ar(peaky, "hybrid", options)


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
    merged = drafter.candidates(tokens, 4)
    sevens = [
        i for i, (t, p) in enumerate(zip(merged.tokens, merged.parents, strict=True)) if p < 0 and t == 7
    ]
    assert len(sevens) == 1
    assert {s for s, _ in merged.tags[sevens[0]]} == {0, 1}  # both sources own it
    assert merged.probs[sevens[0]] == max(
        pld.probs[0], max(p for t, p in zip(aded.tokens, aded.probs, strict=True) if t == 7)
    )
    for source in drafter.sources:
        source.begin(tokens, SamplingConfig())
    tree = drafter.propose(tokens, 4)
    assert [tree.tokens[c] for c in tree.children(-1)].count(7) == 1


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
