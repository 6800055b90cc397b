"""Bad input to the Python API is one clear SpecDecodeError naming what was wrong."""

import pytest

import specdecode
from specdecode import api
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def tiny_api(monkeypatch, tiny_llama):
    monkeypatch.setattr(api, "load_model", lambda name, **kw: tiny_llama)
    monkeypatch.setattr(api, "_DECODERS", {})
    return tiny_llama


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": b"t1 t2"}, r"the prompt must be a str, got bytes \(decode it first"),
        ({"prompt": None}, "the prompt must be a str, got NoneType"),
        ({"temperature": None}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ({"temperature": 1e-40}, "too small to sample with: use 0 for greedy"),
        ({"top_k": 1.5}, "top-k must be a whole number"),
        ({"top_p": "0.5"}, "top-p must be a number"),
        ({"seed": 99999999999999999999999}, r"seed must be a whole number from 0 to 2\*\*64 - 1"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"max_new_tokens": "10"}, "max new tokens must be a whole number"),
        ({"options": {"draft_len": [1, 2]}, "method": "pld"}, "option 'draft_len' takes a int, got list"),
        ({"options": {"draft_len": 2.5}, "method": "pld"}, "option 'draft_len' takes a int, got float"),
        ({"options": [("draft_len", 2)], "method": "pld"}, "options must be a dict"),
        ({"stop": 3}, "stop must be a string or a list of strings"),
        ({"method": 3}, "method must be a string"),
    ],
)
def test_bad_arguments_are_one_clear_error(tiny_api, kwargs, message):
    args = {"prompt": "t1 t2 t3", "max_new_tokens": 4} | kwargs
    prompt = args.pop("prompt")
    with pytest.raises(SpecDecodeError, match=message):
        specdecode.generate(prompt, **args)
    with pytest.raises(SpecDecodeError, match=message):
        list(specdecode.stream(prompt, **args))


def test_a_stop_string_is_one_string_not_its_characters(tiny_api):
    full = specdecode.generate("t1 t2 t3", raw=True, max_new_tokens=12)
    words = full.text.split()
    stop = " ".join(words[2:4])
    cut = specdecode.generate("t1 t2 t3", raw=True, max_new_tokens=12, stop=stop)
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert specdecode.generate("t1 t2 t3", raw=True, max_new_tokens=12, stop=[stop]).text == cut.text


def test_sampling_config_accepts_what_it_should():
    assert SamplingConfig(temperature=1, top_k=3, top_p=1, seed=2**64 - 1).gumbel
    assert SamplingConfig(temperature=0.7, coupling="residual").gumbel is False
    with pytest.raises(SpecDecodeError, match="coupling must be one of auto, residual, gumbel"):
        SamplingConfig(coupling="nope")


def test_an_integral_float_option_is_accepted_for_a_float(tiny_api):
    lm = tiny_model_for_tests(vocab_size=48, seed=1)
    from specdecode.engine import build_decoder

    assert build_decoder("aded", lm, options={"explore": 1}).drafter.explore == 1


def test_a_prediction_through_the_api(tiny_api):
    want = specdecode.generate("t1 t2 t3", raw=True, max_new_tokens=12)
    got = specdecode.generate("t1 t2 t3", raw=True, max_new_tokens=12, prediction=want.text)
    assert got.token_ids == want.token_ids
    assert got.prediction_accepted > 0
    with pytest.raises(SpecDecodeError, match="prediction must be a str"):
        specdecode.generate("t1 t2 t3", raw=True, max_new_tokens=12, prediction=[1, 2])
