"""The HTTP server, driven over loopback with the official ``openai`` client (and raw HTTP for
what the client hides): a real uvicorn server in a thread, a tiny model built in code."""

import dataclasses
import json
import socket
import threading
import time

import httpx2 as httpx
import openai
import pytest

from specdecode.engine import build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.server import Limits, ServerConfig, create_app
from specdecode.server.loadtest import run_load
from specdecode.server.serving import serve_in_thread

TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}t2{% endif %}"
CHAT = [{"role": "system", "content": "t7 t8"}, {"role": "user", "content": "t3 t4 t5 t9"}]
GREEDY = {"temperature": 0, "max_tokens": 24}


def round_trip_tokenizer(vocab_size: int):
    """The tiny word-level tokenizer without special tokens: tiny_tokenizer's unk token "t1" is
    matched inside words ("t11" -> t1 t1), so its text would not give back its token ids, and
    a prediction is sent as text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t1"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def lm():
    lm = tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3, eos_token_id=None)
    return dataclasses.replace(lm, tokenizer=round_trip_tokenizer(64))


@pytest.fixture(scope="module")
def base_url(lm, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # no cached latency curve: the fallback sizes drafts
        mp.setenv("SPECDECODE_CACHE", str(tmp_path_factory.mktemp("cache")))
        limits = Limits(max_tokens=300, default_max_tokens=16)
        app = create_app(lm, ServerConfig(method="ar", limits=limits, max_active=4, max_queue=32))
        with serve_in_thread(app) as url:
            yield url


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def chat_ids(lm, messages):
    text = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def chat(client, **kw):
    return client.chat.completions.create(model="tiny-llama-v64-s3", messages=kw.pop("messages", CHAT), **kw)


def metric(http, line_start):
    """The value of the first /metrics sample whose line starts with ``line_start``."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------- the happy paths


def test_models_and_health(client, http):
    assert [m.id for m in client.models.list().data] == ["tiny-llama-v64-s3"]
    assert http.get("/health").json()["status"] == "ok"
    card = http.get("/v1/models/tiny-llama-v64-s3").json()
    assert card["specdecode"]["default_method"] == "ar" and "hybrid" in card["specdecode"]["methods"]


def test_chat_is_the_engine_answer_with_usage(client, lm):
    r = chat(client, **GREEDY)
    want = build_decoder("ar", lm).generate_ids(chat_ids(lm, CHAT), max_new_tokens=24)
    assert r.choices[0].message.content == want.text
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "length"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens) == (len(want_ids := chat_ids(lm, CHAT)), 24)
    assert u.total_tokens == len(want_ids) + 24
    ext = u.model_extra["specdecode"]
    assert ext["method"] == "ar" and ext["mean_accepted"] == 1.0 and ext["steps"] == 23
    assert u.completion_tokens_details.accepted_prediction_tokens == 0


def test_chat_stream_is_the_same_text_in_chunks(client):
    whole = chat(client, **GREEDY).choices[0].message.content
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1])
    assert len(chunks) > 5  # streamed piece by piece, not at once


def test_stream_is_server_sent_events_ending_with_done(http):
    body = {"prompt": "t3 t4", "max_tokens": 8, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "text_completion" and "usage" not in first


def test_completions_raw_prompt(client, lm):
    r = client.completions.create(model="tiny-llama-v64-s3", prompt="t3 t4 t5", max_tokens=12, temperature=0)
    want = build_decoder("ar", lm).generate_ids(lm.encode_prompt("t3 t4 t5", raw=True), max_new_tokens=12)
    assert r.choices[0].text == want.text and r.object == "text_completion"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == 3
    streamed = client.completions.create(
        model="tiny-llama-v64-s3", prompt=[3, 4, 5], max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want.text


def test_default_max_tokens_and_temperature(client):
    r = chat(client, seed=1)  # OpenAI's default temperature (1), the server's default max tokens (16)
    assert r.usage.completion_tokens == 16
    again = chat(client, seed=1)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_a_seed_gives_one_text_for_every_method(client):
    texts = {
        method: chat(
            client,
            temperature=1.0,
            seed=11,
            extra_body={"specdecode": {"method": method}},
            **{"max_tokens": 24},
        )
        .choices[0]
        .message.content
        for method in ("ar", "pld", "hybrid")
    }
    assert len(set(texts.values())) == 1
    other = chat(client, temperature=1.0, seed=12, max_tokens=24).choices[0].message.content
    assert other != texts["ar"]


def test_the_method_per_request_changes_speed_not_text(client):
    ar = chat(client, **GREEDY)
    for method in ("pld", "hybrid", "lookahead"):
        r = chat(client, extra_body={"specdecode": {"method": method}}, **GREEDY)
        assert r.choices[0].message.content == ar.choices[0].message.content
        ext = r.usage.model_extra["specdecode"]
        assert ext["method"] == method
        # the prefill's token, then per forward the accepted draft tokens and one more
        assert r.usage.completion_tokens <= 1 + ext["steps"] + ext["accepted"]
        assert ext["mean_accepted"] >= 1.0 and ext["drafted"] >= ext["accepted"]


def test_stop_strings(client):
    words = chat(client, **GREEDY).choices[0].message.content.split(" ")
    stop = f" {words[5]} "  # a whole word in the middle
    cut = chat(client, stop=[stop, "never"], **GREEDY)
    want = " ".join(words)[: " ".join(words).find(stop)]
    assert cut.choices[0].message.content == want and cut.choices[0].finish_reason == "stop"
    streamed = chat(client, stop=stop, stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want


# ---------------------------------------------------------------------------- Predicted Outputs


def test_a_right_prediction_is_accepted_and_changes_nothing(client):
    plain = chat(client, temperature=0, max_tokens=64)
    answer = plain.choices[0].message.content
    r = chat(client, temperature=0, max_tokens=64, prediction={"type": "content", "content": answer})
    assert r.choices[0].message.content == answer
    details, ext = r.usage.completion_tokens_details, r.usage.model_extra["specdecode"]
    assert details.accepted_prediction_tokens >= 0.8 * 63  # all but the prefill's token could be
    assert details.accepted_prediction_tokens + details.rejected_prediction_tokens == 64
    assert ext["mean_accepted"] > 8 and ext["steps"] <= 8  # a few long steps instead of 63


def test_a_wrong_prediction_changes_nothing(client, lm):
    answer = chat(client, temperature=0, max_tokens=40).choices[0].message.content
    wrong = " ".join(f"t{(i * 7) % 64}" for i in range(40))
    parts = [{"type": "text", "text": wrong[:20]}, {"type": "text", "text": wrong[20:]}]
    r = chat(client, temperature=0, max_tokens=40, prediction={"type": "content", "content": parts})
    assert r.choices[0].message.content == answer
    details = r.usage.completion_tokens_details
    assert details.accepted_prediction_tokens + details.rejected_prediction_tokens == 40
    seeded = dict(temperature=1.0, seed=5, max_tokens=40)
    sampled = chat(client, **seeded).choices[0].message.content
    with_pred = chat(client, prediction={"type": "content", "content": sampled}, **seeded)
    assert with_pred.choices[0].message.content == sampled


# ---------------------------------------------------------------------------- bad input


def post(http, path, body):
    r = http.post(path, json=body) if not isinstance(body, bytes) else http.post(path, content=body)
    return r.status_code, r.json()["error"]


LONG = " ".join(["t5"] * 600)  # longer than the tiny model's 512 positions


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    [
        ("/v1/chat/completions", b"{not json", 400, None, "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, None, "must be a JSON object"),
        ("/v1/chat/completions", b'{"messages": NaN}', 400, None, "not valid JSON"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages", "non-empty array"),
        ("/v1/chat/completions", {}, 400, "messages", "non-empty array"),
        ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "got a string"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "robot", "content": "t3"}]},
            400,
            "messages[0].role",
            "role",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content", "missing"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            "messages[0].content[0]",
            "'image_url' are not supported",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": "10"}, 400, "max_tokens", "integer"),
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, 400, "max_tokens", "from 1 to 300"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "max_completion_tokens": 301},
            400,
            "max_completion_tokens",
            "300",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "temperature": 3}, 400, "temperature", "from 0.0 to 2.0"),
        ("/v1/chat/completions", {"messages": CHAT, "temperature": True}, 400, "temperature", "a number"),
        ("/v1/chat/completions", {"messages": CHAT, "top_p": 0}, 400, "top_p", "greater than 0"),
        ("/v1/chat/completions", {"messages": CHAT, "seed": -1}, 400, "seed", "from 0"),
        ("/v1/chat/completions", {"messages": CHAT, "n": 2}, 400, "n", "n = 2 is not supported"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]},
            400,
            "stop",
            "at most 4",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "stop": 5}, 400, "stop", "string or an array"),
        ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, 400, "stream", "true or false"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "stream_options": {"include_usage": True}},
            400,
            "stream_options",
            "only allowed",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "colour": 1},
            400,
            "colour",
            "Unrecognized request argument",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "frequency_penalty": 0.5},
            400,
            "frequency_penalty",
            "not supported",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "logprobs": True}, 400, "logprobs", "not supported"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "prediction": {"type": "text"}},
            400,
            "prediction.type",
            '"content"',
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "specdecode": {"method": "magic"}},
            400,
            "specdecode.method",
            "unknown method",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "specdecode": {"methd": "pld"}},
            400,
            "specdecode.methd",
            "not a known field",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "specdecode": {"method": "draft-model"}},
            400,
            "specdecode.method",
            "needs a draft",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "model": "gpt-4o"}, 404, "model", "does not exist"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": LONG}]},
            400,
            "messages",
            "601 tokens, more than the 511",
        ),
        (
            "/v1/completions",
            {"prompt": " ".join(["t5"] * 400), "max_tokens": 200},
            400,
            "max_tokens",
            "at most 112",
        ),
        ("/v1/completions", {"prompt": ""}, 400, "prompt", "empty"),
        ("/v1/completions", {"prompt": ["t3", "t4"]}, 400, "prompt", "one prompt per request"),
        ("/v1/completions", {"prompt": [3, 999]}, 400, "prompt", "token id 999"),
        ("/v1/completions", {"prompt": "t3", "echo": True}, 400, "echo", "not supported"),
        ("/v1/completions", {"prompt": "t3", "messages": CHAT}, 400, "messages", "Unrecognized"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(http, path, body, status, param, words):
    code, error = post(http, path, body)
    assert code == status
    assert error["param"] == param and words in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_routes_and_sizes(http):
    assert http.get("/v1/nothing").status_code == 404 and "error" in http.get("/v1/nothing").json()
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = http.post("/v1/completions", content=b'{"prompt": "' + b"t3 " * (2 << 20) + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_the_client_raises_a_clear_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=[], max_tokens=4)
    assert "messages must be a non-empty array" in str(e.value) and e.value.body["param"] == "messages"


# ---------------------------------------------------------------------------- cancellation


CANCELLED = 'specdecode_requests_total{endpoint="chat",method="ar",outcome="cancelled"}'


def wait_for_metric(http, name, value, seconds=10):
    deadline = time.monotonic() + seconds
    while metric(http, name) < value and time.monotonic() < deadline:
        time.sleep(0.05)
    outcomes = [line for line in http.get("/metrics").text.splitlines() if "requests_total{" in line]
    assert metric(http, name) == value, outcomes


def test_a_client_that_disconnects_cancels_its_stream(base_url, http):
    before = metric(http, CANCELLED)
    body = {"messages": CHAT, "max_tokens": 300, "temperature": 0, "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=30) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        while '"content": "t' not in next(lines):  # generating; now hang up
            pass
    wait_for_metric(http, CANCELLED, before + 1)  # long before 300 tokens
    assert http.get("/health").json()["active"] == 0


def test_a_client_that_disconnects_cancels_its_request(base_url, http):
    before = metric(http, CANCELLED)
    port = int(base_url.rsplit(":", 1)[1])
    raw = json.dumps({"messages": CHAT, "max_tokens": 300, "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:  # a plain request, closed while it waits
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))
        deadline = time.monotonic() + 10
        while http.get("/health").json()["active"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    wait_for_metric(http, CANCELLED, before + 1)
    assert http.get("/health").json()["active"] == 0


def test_a_full_queue_is_a_429(lm):
    app = create_app(lm, ServerConfig(max_active=1, max_queue=1))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        body = {"messages": CHAT, "max_tokens": 100, "temperature": 0, "stream": True}
        statuses = []
        with c.stream("POST", "/v1/chat/completions", json=body) as first:
            lines = first.iter_lines()
            while '"content": "t' not in next(lines):  # text: it is generating in the only slot
                pass
            second = {**body, "stream": False}
            waiting = threading.Thread(
                target=lambda: statuses.append(c.post("/v1/chat/completions", json=second).status_code)
            )
            waiting.start()
            deadline = time.monotonic() + 10
            while c.get("/health").json()["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        waiting.join(30)
        assert statuses == [200]  # the one that waited was served once the first went away
        assert 'specdecode_rejected_requests_total{status="429"} 1.0' in c.get("/metrics").text


def test_a_draining_server_answers_503(lm):
    app = create_app(lm, ServerConfig())
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        app.state.server.scheduler.drain()  # what SIGTERM does first
        r = c.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert c.get("/health").status_code == 503 and c.get("/health").json()["status"] == "draining"


# ---------------------------------------------------------------------------- load and metrics


def load_requests():
    """16 different requests: chat and completions, three methods, greedy and seeded."""
    out = []
    for i in range(16):
        method = ("ar", "pld", "hybrid")[i % 3]
        req = {"model": "tiny-llama-v64-s3", "max_tokens": 16, "temperature": 0 if i % 4 else 0.8}
        req |= {"seed": i} if i % 4 == 0 else {}
        req["extra_body"] = {"specdecode": {"method": method}}
        if i % 2:
            req |= {"endpoint": "completions", "prompt": f"t{i + 3} t{i + 9} t{2 * i + 1}"}
        else:
            req |= {"endpoint": "chat", "messages": [{"role": "user", "content": f"t{i + 5} t{i + 1}"}]}
        out.append(req)
    return out


def test_load_16_concurrent_clients_get_what_each_gets_alone(base_url, http):
    requests = load_requests()
    alone = run_load(base_url, requests, concurrency=1, timeout=60)
    together = run_load(base_url, requests, concurrency=16, timeout=60)
    assert [o.error for o in alone.outcomes + together.outcomes] == [None] * 32  # none lost
    assert [o.text for o in together.outcomes] == [o.text for o in alone.outcomes]
    assert all(o.usage["completion_tokens"] == 16 for o in together.outcomes)
    s1, s16 = alone.summary(), together.summary()
    print(f"\nload, tiny model, 16 requests x 16 tokens: alone {s1}\n16 concurrent: {s16}")
    assert s16["latency_p95_s"] >= s16["latency_p50_s"] > 0 and s16["tokens_per_second"] > 0
    assert http.get("/health").json() == {"status": "ok", "waiting": 0, "active": 0}


def test_metrics_in_prometheus_format(http, client):
    chat(client, extra_body={"specdecode": {"method": "hybrid"}}, **GREEDY)
    text = http.get("/metrics").text
    for name in (
        "specdecode_requests_total",
        "specdecode_completion_tokens_total",
        'specdecode_drafted_tokens_total{method="hybrid"}',
        'specdecode_accepted_tokens_total{method="hybrid"}',
        'specdecode_phase_seconds_total{method="ar",phase="forward"}',
        'specdecode_phase_seconds_total{method="ar",phase="prefill"}',
        "specdecode_queue_length 0.0",
        "specdecode_active_generations 0.0",
        "specdecode_request_seconds_bucket",
        "specdecode_time_to_first_token_seconds_bucket",
        'specdecode_prediction_tokens_total{result="accepted"}',
    ):
        assert name in text, name
    assert metric(http, 'specdecode_drafted_tokens_total{method="hybrid"}') > 0
