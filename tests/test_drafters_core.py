"""pld, draft-model (same and different tokenizer) and dyspec: lossless, and refusing bad setups;
the draft model's own KV cache, and which state a fork shares."""

import dataclasses

import pytest
import torch

from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.drafters._bridge import TextBridge
from specdecode.drafters.draft_model import DraftLM
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.loader import LoadedModel
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.tree import DraftTree

V = 40
PROMPTS = [[5, 9, 13, 7, 5, 9, 13], [3, 3, 3, 3], [30, 2, 17, 8, 22, 31, 19, 4, 11, 2, 17]]


@pytest.fixture(scope="module")
def target():
    return tiny_model_for_tests(vocab_size=V, seed=11, eos_token_id=None, initializer_range=0.3)


@pytest.fixture(scope="module")
def drafts(target):
    other = tiny_model_for_tests(vocab_size=V, seed=12, eos_token_id=None, initializer_range=0.3)
    return {"itself": target, "other": other}


def greedy(decoder, prompt, n=32):
    return decoder.generate_ids(prompt, max_new_tokens=n)


@pytest.mark.parametrize(
    ("method", "options"),
    [("pld", {}), ("pld", {"draft_len": 1, "ngram_max": 1}), ("draft-model", {}),
     ("draft-model", {"threshold": 0.0, "max_draft": 3}), ("dyspec", {"budget": 10}),
     ("dyspec", {"budget": 3, "branch": 2, "width": 1})],
)  # fmt: skip
@pytest.mark.parametrize("which", ["itself", "other"])
def test_greedy_output_equals_ar(target, drafts, method, options, which):
    ar = build_decoder("ar", target)
    dec = build_decoder(method, target, draft=drafts[which], options=options)
    for prompt in PROMPTS:
        r = greedy(dec, prompt)
        assert r.token_ids == greedy(ar, prompt).token_ids
    if method != "pld" and which == "itself":
        assert r.mean_accepted > 1.5  # a draft identical to the target is mostly accepted


def test_the_draft_model_grows_a_tree_as_decoding_each_path_alone(target):
    """DraftLM.extend: nodes fed level by level see their ancestors only; drop_tree forgets them."""
    prompt, tree = PROMPTS[2], DraftTree([3, 8, 5, 2, 6, 6], [-1, -1, 0, 0, 2, 1])
    lm = DraftLM(target)
    with torch.inference_mode():
        lm.sync(prompt)
        first = lm.extend(tree.tokens[:2], tree.parents[:2])  # [2, vocab]
        rows = torch.cat([first, lm.extend(tree.tokens, tree.parents)])  # [6, vocab]
        for i, row in enumerate(rows):
            ids = prompt + [tree.tokens[j] for j in tree.path_to(i)]
            plain = target.model(torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(row, plain, atol=1e-4, rtol=0)
        lm.drop_tree()
    assert lm.cache.length == len(prompt)


def test_a_fork_shares_the_learned_threshold_not_the_generation_state():
    target = with_tokenizer(byte_bpe(290), 21)
    dec = build_decoder("draft-model", target, draft=with_tokenizer(byte_bpe(275), 22))
    one, two = dec.drafter, dec.drafter.fork()
    for d in (one, two):
        d.begin([5, 6], SamplingConfig())
    assert one.stop is two.stop
    assert one.lm is not two.lm and one.lm.cache is not two.lm.cache
    assert one.bridge is not two.bridge


def test_pld_drafts_from_the_context(target):
    r = greedy(build_decoder("pld", target), [7, 8, 9, 10, 11, 12] * 4)
    assert r.drafted > 0


@pytest.mark.parametrize(
    ("method", "options"), [("draft-model", {"threshold": 0.0}), ("dyspec", {"budget": 6})]
)
def test_sampling_reproduces_the_target_distribution(method, options):
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    draft = tiny_model_for_tests(vocab_size=8, seed=2, eos_token_id=None, initializer_range=0.3)
    prompt, cfg = [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0)
    counts = sample_joint(build_decoder(method, lm, draft=draft, options=options), prompt, cfg, 2000)
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


# ---- different tokenizers: bridged through text ---------------------------------------------
def byte_bpe(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    corpus = ["the cat sat on the mat", "a dog and a cat", "1 + 2 = 3", "def f(x): return x"] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def with_tokenizer(tokenizer, seed):
    lm = tiny_model_for_tests(vocab_size=len(tokenizer), seed=seed, eos_token_id=None, initializer_range=0.3)
    return dataclasses.replace(lm, tokenizer=tokenizer, key=f"bpe-{seed}")


def test_a_draft_with_another_tokenizer_is_bridged_and_lossless():
    target = with_tokenizer(byte_bpe(290), 21)
    draft = with_tokenizer(byte_bpe(275), 22)
    assert target.tokenizer.get_vocab() != draft.tokenizer.get_vocab()
    prompt = target.tokenizer.encode("the cat sat on the mat and the cat")
    dec = build_decoder("draft-model", target, draft=draft, options={"threshold": 0.0})
    assert isinstance(dec.drafter.bridge, TextBridge)
    r = greedy(dec, prompt, 24)
    assert r.token_ids == greedy(build_decoder("ar", target), prompt, 24).token_ids
    assert r.drafted > 0


def test_a_vocabulary_that_cannot_be_bridged_is_refused():
    target = with_tokenizer(byte_bpe(290), 21)
    draft = tiny_model_for_tests(vocab_size=V, seed=3)  # word-level "t0".."tN": ordinary text is lost
    with pytest.raises(SpecDecodeError, match="cannot be bridged"):
        build_decoder("draft-model", target, draft=draft)


def test_dyspec_needs_the_same_tokenizer():
    target = with_tokenizer(byte_bpe(290), 21)
    draft = with_tokenizer(byte_bpe(275), 22)
    with pytest.raises(SpecDecodeError, match="dyspec needs"):
        build_decoder("dyspec", target, draft=draft, options={"budget": 4})


def test_a_draft_on_another_device_is_refused(target):
    elsewhere = dataclasses.replace(target, device=torch.device("meta"))
    with pytest.raises(SpecDecodeError, match="on meta but the target is on cpu"):
        build_decoder("draft-model", target, draft=elsewhere)


def test_a_draft_model_is_required(target):
    with pytest.raises(SpecDecodeError, match="needs a draft model"):
        build_decoder("draft-model", target)


@pytest.mark.parametrize("options", [{"max_draft": 0}, {"threshold": 1.5}, {"budget": -1}])
def test_bad_draft_options(target, options):
    method = "dyspec" if "budget" in options else "draft-model"
    with pytest.raises(SpecDecodeError, match="must be"):
        build_decoder(method, target, draft=target, options=options)


@pytest.mark.real_model
def test_real_model_pld_and_draft_model_equal_ar(default_model: LoadedModel):
    ids = default_model.encode_prompt(
        "Repeat this sentence twice: the quick brown fox jumps over the lazy dog."
    )
    ar = build_decoder("ar", default_model).generate_ids(ids, max_new_tokens=40)
    for method, draft in (("pld", None), ("draft-model", default_model)):
        r = build_decoder(method, default_model, draft=draft).generate_ids(ids, max_new_tokens=40)
        assert r.token_ids == ar.token_ids
        assert r.mean_accepted > 1.0
