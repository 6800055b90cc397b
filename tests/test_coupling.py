"""The Gumbel coupling with sampled drafts from a draft model that is *not* the target (q != p):
the seeded text is still ``ar``'s, and the chi-square test still finds the target's distribution.
(tests/test_isolation.py covers every method with the target as its own draft; this adds the
draft-model methods with another model's q, where only the coupling keeps the text fixed.)"""

import pytest

from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.engine import build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from test_isolation import PROMPTS, same_or_near_tie

pytestmark = pytest.mark.usefixtures("private_cache")

DRAFTED = [("draft-model", {"threshold": 0.0, "max_draft": 3}), ("dyspec", {"budget": 6})]
SEEDED = SamplingConfig(temperature=1.0, top_k=20, seed=11)


@pytest.fixture(scope="module")
def other_draft():
    return tiny_model_for_tests(vocab_size=64, seed=4, initializer_range=0.3)


@pytest.mark.parametrize(("method", "options"), DRAFTED, ids=[m for m, _ in DRAFTED])
def test_another_draft_model_gives_ars_seeded_text(peaky, other_draft, method, options):
    ar = build_decoder("ar", peaky)
    dec = build_decoder(method, peaky, draft=other_draft, options=options)
    drafted = 0
    for prompt in PROMPTS:
        want = ar.generate_ids(prompt, max_new_tokens=32, sampling=SEEDED).token_ids
        got = dec.generate_ids(prompt, max_new_tokens=32, sampling=SEEDED)
        assert same_or_near_tie(peaky, prompt, got.token_ids, want, SEEDED)
        drafted += got.drafted
    assert drafted > 0


@pytest.fixture(scope="module")
def small():
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    draft = tiny_model_for_tests(vocab_size=8, seed=2, eos_token_id=None, initializer_range=0.3)
    prompt, cfg = [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0)
    return lm, draft, prompt, cfg, exact_joint(lm, prompt, cfg)


def test_gumbel_coupling_is_lossless_with_another_draft(small):
    """Sample by sample the drafted methods give ar's tokens, so their counts are ar's and pass
    the chi-square test with them (for gumbel, the test of any method is the test of ar's)."""
    lm, draft, prompt, cfg, exact = small
    want = sample_joint(build_decoder("ar", lm), prompt, cfg, 300, coupling="gumbel")
    assert chi_square_pvalue(want, exact) > 1e-3
    for method, options in DRAFTED:
        dec = build_decoder(method, lm, draft=draft, options=options)
        assert sample_joint(dec, prompt, cfg, 300, coupling="gumbel") == want
