"""draft-model under the Gumbel coupling draws its drafts as argmax(log q + g_t) with the
verifier's own noise g_t (drafter-invariant speculative decoding): the seeded text stays ar's,
and the drafts are accepted far more often than drafts drawn from q independently of it."""

import pytest

from specdecode.drafters import draft_model
from specdecode.engine import build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from test_isolation import PROMPTS, same_or_near_tie

pytestmark = pytest.mark.usefixtures("private_cache")

OPTIONS = {"threshold": 0.0, "max_draft": 4}


@pytest.fixture(scope="module")
def other_draft():
    return tiny_model_for_tests(vocab_size=64, seed=4, initializer_range=0.3)


@pytest.fixture
def independent_draws(monkeypatch):
    """draft-model as it was: drafts drawn from q with its own generator, blind to the noise."""
    begin = draft_model.DraftModelBase.begin

    def blind_begin(self, prompt_ids, sampling):
        begin(self, prompt_ids, sampling)
        self.noise = None

    def use():
        monkeypatch.setattr(draft_model.DraftModelBase, "begin", blind_begin)

    return use


def run(lm, draft, seeds, coupling="gumbel", drafts=1):
    ar = build_decoder("ar", lm)
    dec = build_decoder("draft-model", lm, draft=draft, options={**OPTIONS, "drafts": drafts})
    drafted = accepted = 0
    for prompt in PROMPTS:
        for seed in seeds:
            cfg = SamplingConfig(temperature=1.0, seed=seed, coupling=coupling)
            want = ar.generate_ids(prompt, max_new_tokens=24, sampling=cfg).token_ids
            got = dec.generate_ids(prompt, max_new_tokens=24, sampling=cfg)
            assert same_or_near_tie(lm, prompt, got.token_ids, want, cfg)
            drafted += got.drafted
            accepted += sum(n - 1 for n in got.accepted_lengths)
    return drafted, accepted


@pytest.mark.parametrize("draft_is_target", [True, False], ids=["self-draft", "other-draft"])
def test_coupled_drafts_give_ars_text_and_are_accepted_more(
    peaky, other_draft, independent_draws, draft_is_target
):
    draft = peaky if draft_is_target else other_draft
    seeds = (0, 1)
    drafted, accepted = run(peaky, draft, seeds)
    assert drafted > 0
    if draft_is_target:  # q == p: the coupled draft is the target's own choice
        assert accepted >= 0.95 * drafted
    independent_draws()
    drafted_before, accepted_before = run(peaky, draft, seeds)
    # measured: 1.00 against 0.07 with the target as its own draft, 0.13 against 0.005 with another
    assert accepted / drafted > 2 * accepted_before / drafted_before + 0.05


def test_drafts_k_under_gumbel_is_one_coupled_chain(peaky, other_draft):
    """drafts=k does not apply under the coupling (its draws are deterministic): one chain, ar's text."""
    drafted_k, accepted_k = run(peaky, other_draft, (5,), drafts=4)
    drafted_1, accepted_1 = run(peaky, other_draft, (5,), drafts=1)
    assert (drafted_k, accepted_k) == (drafted_1, accepted_1)


def test_coupling_without_a_seed_draws_with_the_samplers_noise(peaky, other_draft):
    """coupling=gumbel with no seed: the engine's random seed reaches the drafter, so the drafts
    are still coupled (nearly all accepted with the target as its own draft)."""
    dec = build_decoder("draft-model", peaky, draft=peaky, options=OPTIONS)
    cfg = SamplingConfig(temperature=1.0, coupling="gumbel")
    got = dec.generate_ids(PROMPTS[0], max_new_tokens=24, sampling=cfg)
    assert got.drafted > 0
    assert sum(n - 1 for n in got.accepted_lengths) >= 0.9 * got.drafted
