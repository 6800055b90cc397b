"""``specdecode train``: draft heads trained by self-distillation on a tiny model.

The loss falls, the saved heads reproduce the predictions recorded at training time, an
interrupted run resumes to the same heads, and files for another model or method are refused.
"""

import json

import pytest
import torch

from checkpoints import stop_after_checkpoints
from specdecode.cli import main
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.training import train as training
from specdecode.training.heads import load_heads
from specdecode.training.train import TrainSettings, head_outputs, train_heads

pytestmark = pytest.mark.usefixtures("private_cache")

PROMPTS = [[(5 * i + j) % 44 + 2 for j in range(5)] for i in range(10)]


@pytest.fixture(scope="module")
def lm():
    return tiny_model_for_tests(vocab_size=48, seed=2, initializer_range=0.3)


def settings(method, **kw):
    base = {"num_heads": 3, "steps": 40, "batch": 32, "lr": 1e-2, "max_new_tokens": 30, "save_every": 10}
    return TrainSettings(method, **(base | kw))


@pytest.mark.parametrize("method", ["medusa", "hydra", "clover"])
def test_loss_falls_and_loaded_heads_reproduce_saved_predictions(lm, tmp_path, method):
    result = train_heads(lm, settings(method), tmp_path / "h.safetensors", prompts=PROMPTS, progress=False)
    info = json.loads((tmp_path / "h.json").read_text())
    assert info["model_key"] == lm.key and info["method"] == method and info["steps"] == 40
    first = sum(result.losses[0]) / 3
    assert sum(info["final_losses"]) / 3 < 0.9 * first
    assert not (tmp_path / "h.safetensors.ckpt").exists()  # removed once the result is written

    heads, _ = load_heads(tmp_path / "h.safetensors", lm, method)
    data = training._read_data(tmp_path / info["data"]["file"])
    idx = torch.tensor(info["check"]["positions"])
    with torch.no_grad():
        outs = head_outputs(heads, lm.model.get_input_embeddings(), data, idx)
        again = [lm.model.lm_head(o).argmax(-1).tolist() for o in outs]
    assert again == info["check"]["top1"]


def test_an_interrupted_run_resumes_to_the_same_heads(lm, tmp_path, monkeypatch):
    whole = train_heads(lm, settings("medusa"), tmp_path / "a.safetensors", prompts=PROMPTS, progress=False)

    calls, restore = stop_after_checkpoints(monkeypatch, training)
    with pytest.raises(KeyboardInterrupt):
        train_heads(lm, settings("medusa"), tmp_path / "b.safetensors", prompts=PROMPTS, progress=False)
    assert calls == [10, 20] and (tmp_path / "b.safetensors.ckpt").exists()
    assert not (tmp_path / "b.safetensors").exists()
    restore()
    logged = []
    resumed = train_heads(
        lm, settings("medusa"), tmp_path / "b.safetensors", prompts=PROMPTS, progress=False, log=logged.append
    )
    assert any("at step 20" in line for line in logged)
    assert resumed.losses == whole.losses  # the same batches, the same updates
    a, _ = load_heads(tmp_path / "a.safetensors", lm, "medusa")
    b, _ = load_heads(tmp_path / "b.safetensors", lm, "medusa")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_heads_for_another_model_or_method_are_refused(lm, tmp_path):
    train_heads(lm, settings("hydra", steps=2), tmp_path / "h.safetensors", prompts=PROMPTS, progress=False)
    other = tiny_model_for_tests(vocab_size=48, seed=9, initializer_range=0.3)
    with pytest.raises(SpecDecodeError, match="trained for another model"):
        load_heads(tmp_path / "h.safetensors", other, "hydra")
    with pytest.raises(SpecDecodeError, match="holds hydra heads, not medusa"):
        load_heads(tmp_path / "h.safetensors", lm, "medusa")
    (tmp_path / "h.json").write_text("{not json")
    with pytest.raises(SpecDecodeError, match="cannot be read"):
        load_heads(tmp_path / "h.safetensors", lm, "hydra")


def test_train_command_refuses_bad_input(tmp_path, capsys):
    assert main(["train", "swift"]) == 2
    assert "trainable methods are medusa, hydra, clover" in capsys.readouterr().err
    assert main(["train", "medusa", "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    assert main(["train", "medusa", "--data", str(empty)]) == 2
    assert "holds no prompt" in capsys.readouterr().err
