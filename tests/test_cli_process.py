"""The command line as a real process: what a shell sees on stdin, stdout, stderr and in the exit
status when the input is not text, stdin is closed, the reader of stdout goes away, or bench is
stopped by SIGTERM. A tiny model saved to a folder stands in for a real one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from specdecode.models.testing import tiny_model_for_tests


@pytest.fixture(scope="module")
def endless_folder(tmp_path_factory):
    """A tiny model with no EOS token (it never stops early) and a 512-position context."""
    lm = tiny_model_for_tests(vocab_size=48, seed=5, eos_token_id=None)
    folder = tmp_path_factory.mktemp("endless")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "SPECDECODE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def specdecode(*argv: str) -> list[str]:
    return [sys.executable, "-m", "specdecode", *argv]


def assert_one_line(err: bytes, words: str) -> None:
    text = err.decode()
    assert text.startswith("specdecode: error: ") and text.count("\n") == 1, text
    assert words in text and "Traceback" not in text


def test_invalid_utf8_on_stdin(env):
    p = subprocess.run(
        specdecode("generate", "--model", "/no/such/model", "-"),
        input=b"Say \xff hi",
        capture_output=True,
        env=env,
    )
    assert p.returncode == 2
    assert_one_line(p.stderr, "the prompt on stdin is not valid UTF-8 (byte 0xff at offset 4)")


def test_closed_stdin(env):
    # `specdecode generate - <&-`: the process starts with descriptor 0 closed
    argv = specdecode("generate", "--model", "/no/such/model", "-")
    p = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *argv], capture_output=True, env=env)
    assert p.returncode == 2
    assert_one_line(p.stderr, "stdin is closed")


def test_closed_stdout_ends_quietly(endless_folder, env):
    # `specdecode generate ... | head -c 5`
    p = subprocess.Popen(
        specdecode(
            "generate", "--model", str(endless_folder), "--raw", "--max-new-tokens", "400", "t3 t4 t5"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    got = b""
    while len(got) < 5:
        chunk = p.stdout.read1(5 - len(got))
        assert chunk, "the process ended before writing 5 bytes"
        got += chunk
    p.stdout.close()  # the reader goes away while tokens are still coming
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141  # 128 + SIGPIPE, as for a process killed by the broken pipe
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err


def test_sigterm_marks_the_bench_json_interrupted(endless_folder, env, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"t{3 + i % 40} t7 t9"}) + "\n" for i in range(200)))
    out = tmp_path / "r.json"
    argv = ["bench", "--model", str(endless_folder), "--methods", "ar", "--prompts", str(prompts), "--raw"]
    argv += ["--max-new-tokens", "64", "--warmup", "0", "--threads", "1", "--no-progress", "--no-plots"]
    p = subprocess.Popen(
        specdecode(*argv, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not out.exists():  # written (atomically) after the first prompt
            assert p.poll() is None, p.communicate()[1].decode()
            assert time.monotonic() < deadline, "no prompt finished in 120 s"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err.decode()  # 128 + SIGTERM
    assert "terminated (SIGTERM)" in err.decode() and "Traceback" not in err.decode()
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and data["complete"] is False
    assert 1 <= data["meta"]["prompts_done"] < 200
    assert len(data["prompts"]) == data["meta"]["prompts_done"] == data["summary"]["ar"]["prompts"]
    assert (tmp_path / "r.md").read_text().count("Interrupted") == 1
