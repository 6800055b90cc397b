"""`specdecode serve` as a process: it says where it listens, serves, and stops cleanly on
SIGTERM (requests in flight finish; past --shutdown-timeout they are cancelled)."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx2 as httpx
import openai
import pytest

from specdecode.cli import main
from specdecode.models.testing import tiny_model_for_tests

TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}t2{% endif %}"
CHAT = [{"role": "user", "content": "t3 t4 t5"}]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny model folder (4096 positions, no EOS: answers run to max_tokens) and a template."""
    lm = tiny_model_for_tests(
        vocab_size=64, seed=3, initializer_range=0.3, eos_token_id=None, max_position_embeddings=4096
    )
    folder = tmp_path_factory.mktemp("tiny")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    (folder / "chat.jinja").write_text(TEMPLATE)
    return folder


class Served:
    """A `specdecode serve` process; its stderr is read by a thread into a queue."""

    def __init__(self, folder, *extra: str) -> None:
        argv = [sys.executable, "-m", "specdecode", "serve", "--model", str(folder), "--port", "0"]
        argv += ["--chat-template", str(folder / "chat.jinja"), "--log-level", "warning", "--threads", "1"]
        argv += extra
        env = {**os.environ, "SPECDECODE_CACHE": str(folder / "cache"), "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for("serving ").rsplit(" on ", 1)[1].strip()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)

    def _wait_for(self, text: str, seconds: float = 90) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no {text!r} from the server; stderr:\n{''.join(self.err)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def serve(tiny_folder):
    started = []

    def start(*extra):
        started.append(Served(tiny_folder, *extra))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def content_lines(response):
    for line in response.iter_lines():
        if line.startswith("data: {"):
            yield json.loads(line[6:])
        elif line:
            yield line


def test_serve_answers_and_stops_gracefully_on_sigterm(serve):
    server = serve("--shutdown-timeout", "30")
    assert server.url.startswith("http://127.0.0.1:")
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        r = client.chat.completions.create(model="default", messages=CHAT, max_tokens=8, temperature=0)
        assert r.usage.completion_tokens == 8
    body = {"messages": CHAT, "max_tokens": 150, "temperature": 0, "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as s,
    ):
        events = content_lines(s)
        while not next(events)["choices"][0]["delta"].get("content"):
            pass
        server.proc.send_signal(signal.SIGTERM)  # mid-answer: the answer still completes
        rest = list(events)
    assert rest[-1] == "data: [DONE]"
    finish = [e["choices"][0]["finish_reason"] for e in rest if isinstance(e, dict) and e["choices"]]
    assert finish[-1] == "length"
    assert server.proc.wait(30) == 0
    server._wait_for("stopped (SIGTERM)", 5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)


def test_past_the_shutdown_timeout_requests_are_cancelled(serve):
    # ar, no grace, and a long answer: a tiny model on an idle machine writes hundreds of tokens
    # a second, so the answer must be far longer than the moments before the cut
    server = serve("--shutdown-timeout", "0", "--method", "ar")
    body = {"messages": CHAT, "max_tokens": 4000, "temperature": 0, "stream": True}
    start = time.monotonic()
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as s,
    ):
        events = content_lines(s)
        while not next(events)["choices"][0]["delta"].get("content"):
            pass
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.RemoteProtocolError):  # cut off: the answer is not complete
            list(events)
    assert server.proc.wait(30) == 0
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-active", "0"], "--max-active must be >= 1"),
        (["--port", "70000"], "--port must be from 0 to 65535"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--method", "draft-model"], "needs a draft model"),
        (["--chat-template", "/no/such/file"], "--chat-template /no/such/file: cannot read it"),
    ],
)
def test_bad_options_are_one_line(capsys, argv, message):
    assert main(["serve", "--model", "/no/such/model", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specdecode: error: ") and err.count("\n") == 1 and message in err


def test_a_port_in_use_is_one_line(capsys, tiny_folder):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_folder), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1
