"""The decoding loop: lossless greedy with scripted drafters, stopping, streaming, errors."""

import time

import pytest
import torch

from specdecode.drafters.base import Drafter
from specdecode.engine import Decoder, build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.tree import DraftTree

V = 48
PROMPTS = [[5, 9, 13, 7, 5, 9], [3, 3, 3, 3], [40, 2, 17, 8, 22, 31, 19, 4, 11]]
N = 30


@pytest.fixture(scope="module")
def lm():
    return tiny_model_for_tests(vocab_size=V, seed=7, eos_token_id=None, initializer_range=0.3)


def hf_greedy(lm, prompt, n=N):
    x = torch.tensor([prompt])
    out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                            eos_token_id=None, pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


class Scripted(Drafter):
    """Proposes from the known greedy continuation: ``right`` correct tokens, then wrong ones.

    ``branches`` > 1 puts wrong siblings *before* the right path, so trees are exercised.
    """

    def __init__(self, reference, right, length=4, branches=1):
        self.ref, self.right, self.length, self.branches = reference, right, length, branches

    def begin(self, prompt_ids, sampling):
        self.start = len(prompt_ids)

    def propose(self, tokens, max_depth):
        done = len(tokens) - self.start  # new tokens so far
        truth = self.ref[done : done + min(self.length, max_depth)]
        chain = [t if i < self.right else (t + 1) % V for i, t in enumerate(truth)]
        if self.branches == 1 or not chain:
            return DraftTree.chain(chain)
        toks, parents = [], []
        parent = -1
        for t in chain:  # at every level: wrong siblings first, then the scripted token
            for b in range(1, self.branches):
                toks.append((t + 7 * b) % V)
                parents.append(parent)
            toks.append(t)
            parents.append(parent)
            parent = len(toks) - 1
        return DraftTree(toks, parents)


@pytest.mark.parametrize("branches", [1, 3])
@pytest.mark.parametrize("right", [0, 2, 100])  # never right, right for exactly 2, always right
def test_scripted_drafters_give_plain_greedy_output(lm, right, branches):
    for prompt in PROMPTS:
        ref = hf_greedy(lm, prompt, N + 8)
        dec = Decoder("scripted", lm, Scripted(ref, right, branches=branches))
        r = dec.generate_ids(prompt, max_new_tokens=N)
        assert r.token_ids == ref[:N]
        assert r.new_tokens == N and r.finish_reason == "length"
        expected = {0: 1.0, 2: 3.0, 100: 5.0}[right]  # accepted + bonus per full step
        # every step but the last (which may be cut by max_new_tokens) commits exactly that many
        assert all(n == expected for n in r.accepted_lengths[:-1])
        assert sum(r.accepted_lengths) + 1 >= N


def test_ar_matches_generate_and_counts_steps(lm):
    dec = build_decoder("ar", lm)
    for prompt in PROMPTS:
        r = dec.generate_ids(prompt, max_new_tokens=N)
        assert r.token_ids == hf_greedy(lm, prompt)
        assert r.steps == N - 1 and r.mean_accepted == 1.0


def test_stops_on_eos_and_includes_it():
    lm = tiny_model_for_tests(vocab_size=V, seed=7, initializer_range=0.3, eos_token_id=None)
    ref = hf_greedy(lm, PROMPTS[0])
    eos = ref[5]
    lm_eos = tiny_model_for_tests(vocab_size=V, seed=7, initializer_range=0.3, eos_token_id=eos)
    for method in ("ar", "pld"):
        r = build_decoder(method, lm_eos).generate_ids(PROMPTS[0], max_new_tokens=N)
        assert r.finish_reason == "eos"
        assert r.token_ids == ref[: ref.index(eos) + 1]


def test_stream_pieces_add_up_to_the_text_and_stop_strings_cut(lm):
    dec = build_decoder("pld", lm)
    full = dec.generate_ids(PROMPTS[0], max_new_tokens=N)
    pieces = list(dec.stream(PROMPTS[0], max_new_tokens=N))
    assert "".join(p.text for p in pieces) == full.text
    assert [t for p in pieces for t in p.token_ids] == full.token_ids
    assert pieces[-1].finish_reason == "length" and all(p.finish_reason is None for p in pieces[:-1])
    words = full.text.split()
    stop = " ".join(words[3:5])
    cut = dec.generate_ids(PROMPTS[0], max_new_tokens=N, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert stop not in cut.text


def test_sampling_is_reproducible_with_a_seed(lm):
    dec = build_decoder("pld", lm)
    cfg = SamplingConfig(temperature=1.0, top_k=10, seed=3)
    a = dec.generate_ids(PROMPTS[1], max_new_tokens=20, sampling=cfg)
    b = dec.generate_ids(PROMPTS[1], max_new_tokens=20, sampling=cfg)
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"prompt": []}, "empty"),
        ({"prompt": list(range(1, 40)) * 20}, "context"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    lm = tiny_model_for_tests(vocab_size=V, seed=7, max_position_embeddings=256)
    dec = build_decoder("ar", lm)
    args = {"prompt": PROMPTS[0], "max_new_tokens": 5} | kwargs
    with pytest.raises(SpecDecodeError, match=message):
        dec.generate_ids(args.pop("prompt"), **args)


def test_generation_stops_at_the_context_end():
    lm = tiny_model_for_tests(vocab_size=V, seed=7, max_position_embeddings=64, eos_token_id=None)
    r = build_decoder("pld", lm).generate_ids(list(range(1, 41)), max_new_tokens=100)
    assert r.new_tokens == 24


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"draft_len": 0}, "draft_len"),
        ({"bogus": 1}, "takes no option 'bogus'"),
        ({"draft_len": "x"}, "takes a int"),
    ],
)
def test_method_options_are_checked(lm, opts, message):
    with pytest.raises(SpecDecodeError, match=message):
        build_decoder("pld", lm, options=opts)


def test_unknown_method(lm):
    with pytest.raises(SpecDecodeError, match="unknown method 'nope'; known methods: .*ar, "):
        build_decoder("nope", lm)


class Sleepy(Drafter):
    """Proposes nothing, but takes 20 ms to draft and 10 ms to learn."""

    def propose(self, tokens, max_depth):
        time.sleep(0.02)
        return DraftTree.empty()

    def observe(self, outcome):
        time.sleep(0.01)


def test_phase_seconds_split_the_steps(lm):
    r = Decoder("sleepy", lm, Sleepy()).generate_ids([3, 5, 7, 3, 5, 7, 3, 5], max_new_tokens=11)
    assert set(r.phase_seconds) == {"draft", "forward", "verify", "learn"}
    assert r.steps == 10
    # each phase is charged to its own bucket: 9 proposals of 20 ms (the last step has no room
    # for a draft) and 10 observations of 10 ms
    assert 0.18 <= r.phase_seconds["draft"] < 0.18 + 1.0
    assert 0.1 <= r.phase_seconds["learn"] < r.phase_seconds["draft"]
    assert r.phase_seconds["forward"] > 0 and r.phase_seconds["verify"] > 0
    assert sum(r.phase_seconds.values()) <= r.seconds
