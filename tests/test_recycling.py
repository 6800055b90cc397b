"""``recycling`` (Token Recycling): lossless greedy and sampling, trees, the matrix on disk."""

import numpy as np
import pytest
import torch

from drafting import PROMPTS, check_greedy_equals_ar, spy
from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.mark.parametrize("options", [{}, {"budget": 8}, {"budget": 3, "k": 2}, {"budget": 6, "max_depth": 1}])
def test_greedy_equals_ar(peaky, options):
    check_greedy_equals_ar(peaky, "recycling", options, min_accepted=1.1)


def test_repetitive_text_is_accepted():
    # A small vocabulary and no EOS: the model's output keeps coming back to the same tokens.
    lm = tiny_model_for_tests(vocab_size=16, seed=1, eos_token_id=None, initializer_range=0.3)
    prompt = [3, 4, 5, 3, 4, 5]
    want = build_decoder("ar", lm).generate_ids(prompt, max_new_tokens=64).token_ids
    got = build_decoder("recycling", lm).generate_ids(prompt, max_new_tokens=64)
    assert got.token_ids == want
    assert got.mean_accepted > 1.5


def test_matrix_holds_the_target_top_k_of_scored_rows(peaky):
    rec = build_decoder("recycling", peaky, options={"budget": 4, "k": 3})
    out = rec.generate_ids(PROMPTS[0], max_new_tokens=20).token_ids
    m = rec.drafter.matrix
    assert m.shape == (64, 3) and m.dtype == torch.int32
    # The last committed token before the final step was scored as a root: its row is the
    # target's top-3 after the text up to it (greedy output, so recompute it directly).
    ids = PROMPTS[0] + out[:-1]
    with torch.inference_mode():
        logits = peaky.model(torch.tensor([ids])).logits[0, -1]
    assert sorted(m[ids[-1]].tolist()) == sorted(torch.topk(logits, 3).indices.tolist())
    # Rows fill left to right with distinct tokens.
    for row in m.tolist():
        filled = [t for t in row if t >= 0]
        assert row[: len(filled)] == filled and len(set(filled)) == len(filled)


def test_prompt_bigrams_seed_a_fresh_matrix(peaky):
    rec = build_decoder("recycling", peaky, options={"budget": 4})
    rec.drafter.begin([20, 21, 22, 20, 23], SamplingConfig())
    assert rec.drafter.matrix[20, :2].tolist() == [21, 23]
    tree = rec.drafter.propose([7, 20], 4)
    assert tree.tokens[:1] == [21] and 23 in tree.tokens


def test_sampling_is_lossless():
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    prompt = [3, 5, 3, 5, 3]
    cfg = SamplingConfig(temperature=1.0)
    rec = build_decoder("recycling", lm, options={"budget": 6})
    trees = spy(rec)
    counts = sample_joint(rec, prompt, cfg, 2000)
    assert sum(len(t) for t in trees) > 2000  # drafts were scored
    assert any(not t.is_chain for t in trees)
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


# ---- the matrix on disk --------------------------------------------------------------------


def test_save_load_round_trip(peaky, tmp_path):
    path = tmp_path / "m.safetensors"
    rec = build_decoder("recycling", peaky, options={"budget": 4, "matrix_file": str(path)})
    rec.generate_ids(PROMPTS[0], max_new_tokens=24)
    assert rec.drafter.save() == path
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporaries left
    again = build_decoder("recycling", peaky, options={"matrix_file": str(path)})
    assert torch.equal(again.drafter.matrix, rec.drafter.matrix)
    # state() is (accepted, offered): compare each list, with approx's default tolerance.
    # (pytest.approx does not take nested sequences.)
    got_accepted, got_offered = again.drafter.rates.state()
    want_accepted, want_offered = rec.drafter.rates.state()
    assert got_accepted == pytest.approx(want_accepted)
    assert got_offered == pytest.approx(want_offered)
    # A narrower or wider matrix loads too: columns are cut or padded.
    narrow = build_decoder("recycling", peaky, options={"k": 2, "matrix_file": str(path)})
    assert torch.equal(narrow.drafter.matrix, rec.drafter.matrix[:, :2])
    wide = build_decoder("recycling", peaky, options={"k": 10, "matrix_file": str(path)})
    assert torch.equal(wide.drafter.matrix[:, :8], rec.drafter.matrix)
    assert (wide.drafter.matrix[:, 8:] == -1).all()


def test_persist_saves_per_model_in_the_cache(peaky, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    rec = build_decoder("recycling", peaky, options={"budget": 4, "persist": True})
    rec.generate_ids(PROMPTS[0], max_new_tokens=16)
    rec.generate_ids(PROMPTS[1], max_new_tokens=16)  # begin() saves the first prompt's matrix
    path = tmp_path / "recycling" / f"{peaky.key}.safetensors"
    assert path.is_file()
    rec.drafter.save()
    again = build_decoder("recycling", peaky, options={"persist": True})
    assert torch.equal(again.drafter.matrix, rec.drafter.matrix)


def test_bad_files(peaky, tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(SpecDecodeError, match="not a usable matrix file"):
        build_decoder("recycling", peaky, options={"matrix_file": str(garbage)})

    # Another model's matrix (same vocabulary): refused when named, ignored when cached.
    other = tiny_model_for_tests(vocab_size=64, seed=4, initializer_range=0.3)
    theirs = build_decoder("recycling", other, options={"budget": 4})
    theirs.generate_ids(PROMPTS[0], max_new_tokens=8)
    foreign = theirs.drafter.save(tmp_path / "other.safetensors")
    with pytest.raises(SpecDecodeError, match="saved for model"):
        build_decoder("recycling", peaky, options={"matrix_file": str(foreign)})
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    cached = tmp_path / "recycling" / f"{peaky.key}.safetensors"
    cached.parent.mkdir()
    cached.write_bytes(foreign.read_bytes())
    with pytest.warns(UserWarning, match="saved for model"):
        fresh = build_decoder("recycling", peaky, options={"persist": True})
    assert (fresh.drafter.matrix == -1).all()

    # Another vocabulary.
    small = tiny_model_for_tests(vocab_size=32, seed=3, initializer_range=0.3)
    mine = build_decoder("recycling", small)
    mine.drafter.model_key = peaky.key  # pretend: only the shape differs
    wrong_vocab = mine.drafter.save(tmp_path / "small.safetensors")
    with pytest.raises(SpecDecodeError, match="vocabulary"):
        build_decoder("recycling", peaky, options={"matrix_file": str(wrong_vocab)})

    # Rows with repeated tokens or out-of-range ids are refused.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = build_decoder("recycling", peaky, options={"budget": 4})
    good.generate_ids(PROMPTS[0], max_new_tokens=8)
    ok = good.drafter.save(tmp_path / "ok.safetensors")
    with safe_open(str(ok), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(ok))
    bad = tensors["matrix"].clone()
    bad[5, :2] = torch.tensor([9, 9], dtype=torch.int32)
    save_file({**tensors, "matrix": bad}, str(tmp_path / "dup.safetensors"), metadata=meta)
    with pytest.raises(SpecDecodeError, match="repeats"):
        build_decoder("recycling", peaky, options={"matrix_file": str(tmp_path / "dup.safetensors")})
    bad = tensors["matrix"].clone()
    bad[5, 0] = 64
    save_file({**tensors, "matrix": bad}, str(tmp_path / "range.safetensors"), metadata=meta)
    with pytest.raises(SpecDecodeError, match="out of range"):
        build_decoder("recycling", peaky, options={"matrix_file": str(tmp_path / "range.safetensors")})

    # A missing file named explicitly is fine: it is created on save.
    new = tmp_path / "sub" / "new.safetensors"
    dec = build_decoder("recycling", peaky, options={"matrix_file": str(new)})
    assert dec.drafter.save() == new and new.is_file()
    assert np.array_equal(dec.drafter.rows, np.full((64, 8), -1, dtype=np.int32))


@pytest.mark.real_model
def test_real_model_greedy_equals_ar(default_model):
    ar = build_decoder("ar", default_model)
    # A fixed budget: with the automatic one, whether drafting pays depends on the machine's
    # cached latency curve.
    rec = build_decoder("recycling", default_model, options={"budget": 8})
    prompts = [
        "Write a short Python function that checks whether a number is prime, with a docstring.",
        "List the planets of the solar system in order, one per line, with one fact about each.",
    ]
    accepted = []
    for text in prompts:
        ids = default_model.encode_prompt(text)
        want = ar.generate_ids(ids, max_new_tokens=64).token_ids
        got = rec.generate_ids(ids, max_new_tokens=64)
        assert got.token_ids == want
        accepted.append(got.mean_accepted)
    assert max(accepted) > 1.0
