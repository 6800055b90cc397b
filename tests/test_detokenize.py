"""Streaming detokenization gives the text a whole decode gives, piece by piece."""

import random

import pytest

from specdecode.detokenize import IncrementalDetokenizer
from specdecode.engine import build_decoder
from specdecode.models.testing import tiny_model_for_tests


def chunked(ids, rng):
    i = 0
    while i < len(ids):
        n = rng.randint(1, 5)
        yield ids[i : i + n]
        i += n


def check_round_trip(tokenizer, ids, seed):
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(chunk) for chunk in chunked(ids, random.Random(seed))]
    pieces.append(detok.flush())
    assert "".join(pieces) == detok.text == tokenizer.decode(ids, skip_special_tokens=True)
    return pieces


def test_word_level_tokenizer():
    lm = tiny_model_for_tests(vocab_size=48, seed=5)
    rng = random.Random(0)
    for seed in range(5):
        check_round_trip(lm.tokenizer, [rng.randrange(48) for _ in range(60)], seed)


@pytest.mark.real_model
def test_byte_level_bpe_with_multibyte_characters(default_model):
    tok = default_model.tokenizer
    text = "Café — naïve façade, 東京 🚀 emoji\n\n  indented   spaces\tand tabs. Ünïcödé!"
    ids = tok.encode(text, add_special_tokens=False)
    for seed in range(10):
        pieces = check_round_trip(tok, ids, seed)
        assert not any("\ufffd" in p for p in pieces)  # an unfinished character is held back
    rng = random.Random(1)
    for seed in range(10):  # arbitrary ids: broken byte sequences must still add up
        check_round_trip(tok, [rng.randrange(len(tok)) for _ in range(80)], seed)


def test_stream_with_stop_string_never_shows_part_of_it():
    lm = tiny_model_for_tests(vocab_size=48, seed=7, eos_token_id=None, initializer_range=0.3)
    dec = build_decoder("pld", lm)
    prompt = [5, 9, 13, 7, 5, 9]
    full = dec.generate_ids(prompt, max_new_tokens=30)
    words = full.text.split()
    for a, b in [(3, 5), (6, 7), (10, 13)]:
        stop = " ".join(words[a:b])
        want = dec.generate_ids(prompt, max_new_tokens=30, stop=[stop])
        pieces = list(dec.stream(prompt, max_new_tokens=30, stop=[stop]))
        # nothing of the stop string was shown: pieces cannot be taken back
        assert "".join(p.text for p in pieces) == want.text == full.text[: full.text.find(stop)]
        assert pieces[-1].finish_reason == "stop"
        assert all(p.finish_reason is None for p in pieces[:-1])


def test_stream_ends_with_a_finish_reason_at_the_context_end():
    lm = tiny_model_for_tests(vocab_size=48, seed=7, eos_token_id=None, max_position_embeddings=40)
    pieces = list(build_decoder("ar", lm).stream(list(range(1, 31)), max_new_tokens=100))
    assert sum(len(p.token_ids) for p in pieces) == 10
    assert pieces[-1].finish_reason == "length"
