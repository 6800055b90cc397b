"""``aded`` (Adaptive Draft-Verification): lossless greedy and sampling, the tri-gram statistics,
the tree search."""

import pytest

from drafting import PROMPTS, check_greedy_equals_ar, spy
from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.drafters.aded import TrigramModel
from specdecode.engine import build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.mark.parametrize(
    "options", [{}, {"budget": 8}, {"budget": 3, "top": 2}, {"budget": 6, "max_depth": 1}]
)
def test_greedy_equals_ar(peaky, options):
    check_greedy_equals_ar(peaky, "aded", options)


def test_repetitive_text_is_learned():
    # A small vocabulary and no EOS: the model's output keeps coming back to the same tri-grams.
    lm = tiny_model_for_tests(vocab_size=16, seed=1, eos_token_id=None, initializer_range=0.3)
    ar = build_decoder("ar", lm)
    aded = build_decoder("aded", lm, options={"budget": 8})
    prompt = [3, 4, 5, 3, 4, 5]
    want = ar.generate_ids(prompt, max_new_tokens=64).token_ids
    got = aded.generate_ids(prompt, max_new_tokens=64)
    assert got.token_ids == want
    assert got.mean_accepted > 1.5


def test_trigram_model():
    m = TrigramModel(keep=3, decay=0.5)
    for c in (7, 7, 8):
        m.add(1, 2, c)
    found, seen = m.candidates(1, 2, 5)
    assert seen and [c for c, _ in found] == [7, 8]
    assert sum(p for _, p in found) == pytest.approx(1.0)
    # An unseen tri-gram context backs off to the bigram.
    found, seen = m.candidates(9, 2, 5)
    assert not seen and found[0][0] == 7
    assert m.candidates(1, 3, 5) == ([], False)
    # Recency: after a tick, new evidence outweighs old counts.
    m.tick()
    for _ in range(2):
        m.add(1, 2, 9)
    assert m.candidates(1, 2, 1)[0][0][0] == 9
    # Pruned to `keep` entries per context.
    for c in (10, 11, 12):
        m.add(1, 2, c, weight=100)
    assert len(m.tri[(1, 2)]) == 3
    # Rescaling keeps the ranking.
    for _ in range(60):
        m.tick()
    m.add(1, 2, 10)
    assert m.inc < 1e12
    assert m.candidates(1, 2, 1)[0][0][0] == 10


def test_statistics_persist_across_prompts(peaky):
    aded = build_decoder("aded", peaky, options={"budget": 4})
    aded.generate_ids(PROMPTS[0], max_new_tokens=16)
    before = len(aded.drafter.model.tri)
    aded.generate_ids(PROMPTS[2], max_new_tokens=16)
    assert len(aded.drafter.model.tri) > before
    assert (3, 5) in aded.drafter.model.tri  # from the first prompt, still there


def test_sampling_is_lossless():
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    prompt = [3, 5, 3, 5, 3]
    cfg = SamplingConfig(temperature=1.0)
    aded = build_decoder("aded", lm, options={"budget": 6})
    trees = spy(aded)
    counts = sample_joint(aded, prompt, cfg, 2000)
    assert sum(len(t) for t in trees) > 2000
    assert any(not t.is_chain for t in trees)
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


@pytest.mark.real_model
def test_real_model_greedy_equals_ar(default_model):
    ids = default_model.encode_prompt("Explain in three sentences why the sky is blue.")
    want = build_decoder("ar", default_model).generate_ids(ids, max_new_tokens=64).token_ids
    got = build_decoder("aded", default_model, options={"budget": 8}).generate_ids(ids, max_new_tokens=64)
    assert got.token_ids == want
    assert got.mean_accepted > 1.0
