"""kangaroo: the target's first layers plus a trained adapter draft; drafting stops when the
draft's confidence drops.

Lossless through the shared verifier (greedy = ar, chi-square at temperature 1); the drafter's
own cache of shallow-layer and adapter rows gives, at every step, the logits the adapter gives
over the whole text from scratch (kept rows of accepted drafts, dropped rows of rejected ones);
training lowers the loss, the saved adapter reproduces its recorded predictions, an interrupted
run resumes to the same adapter, and a file for another model (or another method) is refused.
"""

import json

import pytest
import torch

import drafting
from checkpoints import stop_after_checkpoints
from drafting import PROMPTS, spy
from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.cli import main
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.training import kangaroo as training
from specdecode.training.kangaroo import KangarooSettings, load_adapter, train_adapter
from specdecode.training.train import TrainSettings, train_heads

pytestmark = pytest.mark.usefixtures("private_cache")

TRAIN_PROMPTS = [[(7 * i + j) % 60 + 2 for j in range(6)] for i in range(12)]


def settings(**kw):
    base = {
        "exit_layer": 1,
        "steps": 40,
        "batch": 64,
        "seqs": 4,
        "lr": 1e-2,
        "max_new_tokens": 40,
        "save_every": 10,
    }
    return KangarooSettings(**(base | kw))


@pytest.fixture(scope="module")
def lm():
    """A tiny peaked model with 3 layers (the adapter sits on the first)."""
    return tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3, num_hidden_layers=3)


@pytest.fixture(scope="module")
def adapter_file(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kangaroo")
    return train_adapter(lm, settings(), folder / "k.safetensors", prompts=TRAIN_PROMPTS, progress=False)


def check_equals_ar(lm, options, prompts=PROMPTS + TRAIN_PROMPTS[:3], tokens=40):
    return drafting.check_equals_ar(lm, "kangaroo", options, prompts, tokens)


@pytest.mark.parametrize(
    "options",
    [{"threshold": 0.0}, {"threshold": 0.0, "max_draft": 2}, {}, {"threshold": 0.3, "adapt": 0.05}],
)
def test_greedy_equals_ar(lm, adapter_file, options):
    decoder, trees, results = check_equals_ar(lm, {"heads": str(adapter_file.path)} | options)
    assert all(t.is_chain for t in trees)
    limit = options.get("max_draft", 6)
    assert max(len(t) for t in trees) <= limit
    if options.get("threshold") == 0.0:  # never stops early: max_draft but near the token limit
        assert sum(len(t) == limit for t in trees) > 0.7 * len(trees) and min(len(t) for t in trees) >= 1
        assert max(r.mean_accepted for r in results) > 1.3  # the trained adapter's drafts are accepted
    if options.get("adapt"):
        assert decoder.drafter.stop.value != options["threshold"]  # the threshold moved


def test_the_threshold_stops_drafting(lm, adapter_file):
    """Every draft token but the last of each step clears the threshold, and the step stopped
    early unless it hit max_draft: so a high threshold drafts less than a low one."""
    decoder, trees, _ = check_equals_ar(lm, {"heads": str(adapter_file.path), "threshold": 0.9})
    low, low_trees, _ = check_equals_ar(lm, {"heads": str(adapter_file.path), "threshold": 0.05})
    assert sum(map(len, trees)) < sum(map(len, low_trees))
    assert any(len(t) == 0 for t in trees)  # some steps stopped before the first token


def test_cached_rows_give_the_logits_of_a_fresh_pass(lm, adapter_file):
    """At every pass, the draft's logits (from the rows the drafter kept across steps: accepted
    drafts kept, rejected ones dropped) equal the adapter's over the whole text from scratch;
    and each step's first pass ends at the root, with the rows of the whole committed text."""
    decoder = build_decoder("kangaroo", lm, options={"heads": str(adapter_file.path), "threshold": 0.0})
    drafter = decoder.drafter
    seen, texts = [], []
    run, propose = drafter._pass, drafter.propose

    def recording_pass(tokens, start):
        logits = run(tokens, start)
        seen.append((list(drafter._fed), logits.clone(), start))
        return logits

    def recording_propose(tokens, max_depth):
        texts.append((len(seen), list(tokens)))
        return propose(tokens, max_depth)

    drafter._pass, drafter.propose = recording_pass, recording_propose
    for prompt in PROMPTS:
        decoder.generate_ids(prompt, max_new_tokens=30)
    for i, tokens in texts:
        assert seen[i][0] == tokens
    # rows were reused: most first passes start past the prompt, one or two tokens before the root
    assert sum(len(tokens) - seen[i][2] <= 2 for i, tokens in texts) > len(texts) // 2
    checked = 0
    with torch.no_grad():
        for fed, logits, _ in seen[:: max(1, len(seen) // 40)]:
            z, rope = training.shallow_pass(drafter.base, drafter.shallow, torch.tensor([fed]), 0)
            fresh = lm.model.lm_head(drafter.adapter(z, rope)[0, -1]).float()
            assert torch.allclose(logits, fresh, atol=1e-4), fed
            checked += 1
    assert checked > 20


def test_sampling_is_lossless(tmp_path):
    lm = tiny_model_for_tests(
        vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3, num_hidden_layers=2
    )
    prompts = [[(3 * i + j) % 8 for j in range(4)] for i in range(8)]
    path = train_adapter(
        lm, settings(steps=30, max_new_tokens=30), tmp_path / "k.safetensors", prompts=prompts, progress=False
    ).path
    decoder = build_decoder("kangaroo", lm, options={"heads": str(path), "threshold": 0.0, "max_draft": 3})
    trees = spy(decoder)
    prompt = [3, 5, 3, 5, 3]
    cfg = SamplingConfig(temperature=1.0)
    counts = sample_joint(decoder, prompt, cfg, 2000)
    assert sum(len(t) for t in trees) >= 2000 and all(t.draft_probs is not None for t in trees if len(t))
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


# ---- training ---------------------------------------------------------------------------------
def test_loss_falls_and_the_saved_adapter_reproduces_its_predictions(lm, adapter_file, tmp_path):
    info = adapter_file.info
    assert info["model_key"] == lm.key and info["method"] == "kangaroo" and info["exit_layer"] == 1
    # the loss cannot fall below the labels' own entropy, high for this tiny random model
    assert info["steps"] == 40 and info["final_loss"] < 0.93 * adapter_file.losses[0][0]
    assert info["eval_top1_agreement"] > info["eval_top1_agreement_untrained"]
    # the adapter kept is the best one on the held-out text, judged every save_every steps
    assert [step for step, _ in info["eval_curve"]] == [10, 20, 30, 40]
    best = max(score for _, score in info["eval_curve"])
    assert info["eval_top1_agreement"] == pytest.approx(best, abs=1e-4)
    assert dict(info["eval_curve"])[info["kept_step"]] == best
    assert not adapter_file.path.with_name("k.safetensors.ckpt").exists()

    adapter, _ = load_adapter(adapter_file.path, lm)
    from specdecode.training import train as common

    data = common._read_data(adapter_file.path.with_name(info["data"]["file"]))
    states = training.exit_states(lm, data, 1)
    base = lm.model.model
    seq = info["check"]["sequence"]
    again = training.predictions(adapter, base, lm.model.lm_head, data, states, seq)[:32]
    assert again == info["check"]["top1"] and len(again) >= 10
    # an untrained adapter predicts otherwise: the comparison means something
    fresh = training.new_adapter(lm.model)
    other = training.predictions(fresh, base, lm.model.lm_head, data, states, seq)[:32]
    assert other != again


def test_an_interrupted_run_resumes_to_the_same_adapter(lm, tmp_path, monkeypatch):
    from specdecode.training import train as common

    whole = train_adapter(
        lm, settings(steps=25), tmp_path / "a.safetensors", prompts=TRAIN_PROMPTS, progress=False
    )
    calls, restore = stop_after_checkpoints(monkeypatch, common)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(
            lm, settings(steps=25), tmp_path / "b.safetensors", prompts=TRAIN_PROMPTS, progress=False
        )
    assert calls == [10, 20] and not (tmp_path / "b.safetensors").exists()
    restore()
    logged = []
    resumed = train_adapter(
        lm,
        settings(steps=25),
        tmp_path / "b.safetensors",
        prompts=TRAIN_PROMPTS,
        progress=False,
        log=logged.append,
    )
    assert any("at step 20" in line for line in logged)
    assert resumed.losses == whole.losses
    a, _ = load_adapter(tmp_path / "a.safetensors", lm)
    b, _ = load_adapter(tmp_path / "b.safetensors", lm)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_files_for_another_model_or_method_are_refused(lm, adapter_file, tmp_path):
    other = tiny_model_for_tests(vocab_size=64, seed=9, initializer_range=0.3, num_hidden_layers=3)
    with pytest.raises(SpecDecodeError, match="trained for another model"):
        build_decoder("kangaroo", other, options={"heads": str(adapter_file.path)})
    medusa = train_heads(
        lm,
        TrainSettings("medusa", num_heads=2, steps=2, max_new_tokens=20),
        tmp_path / "m.safetensors",
        prompts=TRAIN_PROMPTS,
        progress=False,
    ).path
    with pytest.raises(SpecDecodeError, match="not a kangaroo adapter .it holds medusa heads"):
        build_decoder("kangaroo", lm, options={"heads": str(medusa)})
    with pytest.raises(SpecDecodeError, match="does not describe specdecode draft heads"):
        build_decoder("medusa", lm, options={"heads": str(adapter_file.path)})
    with pytest.raises(SpecDecodeError, match="no trained adapter.*specdecode train kangaroo"):
        build_decoder("kangaroo", lm)  # nothing at the default location in this test's cache
    # a deeper exit layer than the model has
    info = json.loads(adapter_file.path.with_suffix(".json").read_text())
    (tmp_path / "x.safetensors").write_bytes(adapter_file.path.read_bytes())
    (tmp_path / "x.json").write_text(json.dumps(info | {"exit_layer": 3}))
    with pytest.raises(SpecDecodeError, match="does not fit this model"):
        build_decoder("kangaroo", lm, options={"heads": str(tmp_path / "x.safetensors")})


def test_train_command_refuses_bad_input(capsys):
    assert main(["train", "kangaro"]) == 2
    assert "trainable methods are medusa, hydra, clover, kangaroo" in capsys.readouterr().err
    assert main(["train", "kangaroo", "--exit-layer", "0"]) == 2
    assert "exit layer must be >= 1" in capsys.readouterr().err
    with pytest.raises(SpecDecodeError, match="exit layer must be >= 1 and < 3"):
        train_adapter(
            tiny_model_for_tests(vocab_size=64, seed=3, num_hidden_layers=3),
            settings(exit_layer=3),
            "x.safetensors",
        )


@pytest.mark.real_model
def test_real_model_kangaroo_equals_ar(default_model, tmp_path):
    """An untrained adapter at layer 2 is the plain early exit: poor drafts, same output."""
    adapter = training.new_adapter(default_model.model)
    info = {"model_key": default_model.key, "model_name": default_model.name, "exit_layer": 2}
    training.save_adapter(adapter, tmp_path / "k.safetensors", info)
    ids = default_model.encode_prompt("Explain how a refrigerator keeps food cold.")
    want = build_decoder("ar", default_model).generate_ids(ids, max_new_tokens=40).token_ids
    options = {"heads": str(tmp_path / "k.safetensors"), "threshold": 0.0, "max_draft": 3}
    got = build_decoder("kangaroo", default_model, options=options).generate_ids(ids, max_new_tokens=40)
    assert got.token_ids == want and got.drafted > 0
