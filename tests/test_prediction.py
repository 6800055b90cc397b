"""Predicted Outputs: a request's prediction drafts, and the answer is the one without it."""

import random

import pytest

from specdecode.engine import build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("private_cache")

PROMPT = [40, 2, 9, 17, 23, 5]
N = 60


@pytest.fixture(scope="module")
def lm():
    return tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3, eos_token_id=None)


@pytest.mark.parametrize("method", ["ar", "pld", "recycling", "hybrid"])
def test_a_right_prediction_is_drafted_and_changes_nothing(lm, method):
    want = build_decoder("ar", lm).generate_ids(PROMPT, max_new_tokens=N)
    got = build_decoder(method, lm).generate_ids(PROMPT, max_new_tokens=N, prediction=want.token_ids)
    assert got.token_ids == want.token_ids
    # every token after the prefill's could come from the prediction: few, long steps
    assert got.prediction_accepted >= 0.8 * (N - 1)
    assert got.mean_accepted > 4
    assert got.prediction_rejected == len(want.token_ids) - got.prediction_accepted


@pytest.mark.parametrize("method", ["ar", "pld", "lookahead"])
def test_a_wrong_prediction_changes_nothing(lm, method):
    want = build_decoder(method, lm).generate_ids(PROMPT, max_new_tokens=N).token_ids
    rng = random.Random(0)
    wrong = [rng.randrange(64) for _ in range(N)]
    got = build_decoder(method, lm).generate_ids(PROMPT, max_new_tokens=N, prediction=wrong)
    assert got.token_ids == want
    assert got.prediction_accepted + got.prediction_rejected == N


def test_an_edited_prediction_is_followed_around_the_edit(lm):
    want = build_decoder("ar", lm).generate_ids(PROMPT, max_new_tokens=N).token_ids
    edited = want[:20] + [1, 2, 3, 4, 5] + want[28:]  # the old text: a span differs
    got = build_decoder("ar", lm).generate_ids(PROMPT, max_new_tokens=N, prediction=edited)
    assert got.token_ids == want
    assert got.prediction_accepted >= 40  # before and after the edited span


def test_seeded_sampling_is_the_same_with_or_without_a_prediction(lm):
    cfg = SamplingConfig(temperature=1.0, top_k=20, seed=4)
    want = build_decoder("pld", lm).generate_ids(PROMPT, max_new_tokens=N, sampling=cfg).token_ids
    got = build_decoder("pld", lm).generate_ids(PROMPT, max_new_tokens=N, sampling=cfg, prediction=want)
    assert got.token_ids == want
    assert got.prediction_accepted > 30


def test_stream_steps_report_prediction_tokens(lm):
    want = build_decoder("ar", lm).generate_ids(PROMPT, max_new_tokens=N).token_ids
    stats = []
    pieces = list(build_decoder("ar", lm).stream(PROMPT, max_new_tokens=N, stats=stats, prediction=want))
    assert [t for p in pieces for t in p.token_ids] == want
    assert sum(s.prediction_accepted for s in stats) >= 0.8 * (N - 1)
    assert all(s.prediction_accepted <= s.accepted for s in stats)
