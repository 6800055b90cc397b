"""The latency curve t(n): interpolation, JSON, measuring on a tiny model, the on-disk cache."""

import json
from datetime import datetime

import pytest
import torch

from specdecode.cost import (
    LatencyCurve,
    calibrate,
    calibration_path,
    default_ns,
    load_or_calibrate,
    read_cached,
)
from specdecode.machine import cpu_model


def curve(**kw):
    d = dict(
        ns=[1, 2, 4, 8], seconds=[0.010, 0.012, 0.016, 0.024], device="cpu", dtype="float32", model_key="k"
    )
    d.update(kw)
    return LatencyCurve(**d)


def test_t_interpolates_and_extrapolates():
    c = curve()
    assert c.t(1) == pytest.approx(0.010)
    assert c.t(3) == pytest.approx(0.014)  # between 2 and 4
    assert c.t(6) == pytest.approx(0.020)
    assert c.t(16) == pytest.approx(0.040)  # slope of the last segment: 2 ms per token
    assert c.t(0.5) == pytest.approx(0.009)  # below the first point: the first segment's slope
    assert c.t(-100) == pytest.approx(0.0001)  # never below 1% of t(ns[0])
    assert c.relative(8) == pytest.approx(2.4)
    assert LatencyCurve([4], [0.5], "cpu", "float32", "k").t(100) == 0.5


def test_json_round_trip_and_validation():
    c = curve(context_len=128, device_name="cpu x", extra={"repeats": 3})
    back = LatencyCurve.from_json(c.to_json())
    assert back == c
    for bad in (
        "{nope",
        json.dumps([1]),
        json.dumps({**json.loads(c.to_json()), "seconds": [0.1]}),
        json.dumps({**json.loads(c.to_json()), "ns": [1, 1, 2, 3]}),
        json.dumps({**json.loads(c.to_json()), "seconds": [0.1, -1, 0.2, 0.3]}),
        json.dumps({k: v for k, v in json.loads(c.to_json()).items() if k != "device"}),
        json.dumps({**json.loads(c.to_json()), "format": "other"}),
    ):
        with pytest.raises(ValueError):
            LatencyCurve.from_json(bad)


def test_default_ns():
    assert default_ns(64) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert default_ns(10) == [1, 2, 3, 4, 6, 8, 10]
    assert default_ns(1) == [1]


def test_calibrate_tiny_model(tiny_llama):
    c = calibrate(tiny_llama, ns=[1, 2, 4], repeats=2, context_len=16)
    assert c.ns == [1, 2, 4] and len(c.seconds) == 3 and all(s > 0 for s in c.seconds)
    assert (c.device, c.dtype, c.model_key, c.context_len) == ("cpu", "float32", tiny_llama.key, 16)
    assert c.device_name == cpu_model()
    assert c.extra == {"repeats": 2, "torch": torch.__version__, "threads": torch.get_num_threads()}
    assert datetime.strptime(c.created, "%Y-%m-%dT%H:%M:%S%z").tzinfo is not None


def hf_greedy(lm, prompt, n):
    x = torch.tensor([prompt])
    out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                            eos_token_id=None, pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def test_calibrate_leaves_the_model_usable(tiny_llama):
    # calibration goes through its own Target; the model itself keeps no state
    from specdecode.engine import build_decoder
    from specdecode.sampling import SamplingConfig

    before = build_decoder("ar", tiny_llama).generate_ids([3, 4, 5], max_new_tokens=12).token_ids
    calibrate(tiny_llama, ns=[1, 3], repeats=1, context_len=8)
    r = build_decoder("ar", tiny_llama).generate_ids([3, 4, 5], max_new_tokens=12, sampling=SamplingConfig())
    assert r.token_ids == before  # the same output as before calibrating
    assert r.token_ids == hf_greedy(tiny_llama, [3, 4, 5], 12)[: len(r.token_ids)]  # (it may stop at EOS)


def test_load_or_calibrate_caches(tiny_llama, tmp_path, monkeypatch):
    import specdecode.cost as cost

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    calls = []
    real = cost.calibrate

    def counting(*a, **kw):
        calls.append(kw.get("max_n"))
        return real(*a, **{**kw, "repeats": 1, "context_len": 8})

    monkeypatch.setattr(cost, "calibrate", counting)
    path = calibration_path(tiny_llama)
    assert path == tmp_path / "calibration" / f"{tiny_llama.key}-cpu-float32.json"

    first = load_or_calibrate(tiny_llama, max_n=4)
    assert path.is_file() and calls == [4]
    assert load_or_calibrate(tiny_llama, max_n=4) == first and calls == [4]  # cached
    assert load_or_calibrate(tiny_llama, max_n=3) == first and calls == [4]  # a longer curve serves
    load_or_calibrate(tiny_llama, max_n=6)  # too short: measured again
    assert calls == [4, 6]
    load_or_calibrate(tiny_llama, max_n=6, recalibrate=True)
    assert calls == [4, 6, 6]

    path.write_text("{ corrupt", encoding="utf-8")
    assert read_cached(tiny_llama) is None
    load_or_calibrate(tiny_llama, max_n=4)
    assert calls == [4, 6, 6, 4] and read_cached(tiny_llama) is not None
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left

    # a curve made for another model is not used
    other = json.loads(path.read_text())
    other["model_key"] = "someone-else"
    path.write_text(json.dumps(other))
    assert read_cached(tiny_llama) is None


def test_load_or_calibrate_refuses_other_device(tiny_llama):
    from specdecode.errors import SpecDecodeError

    with pytest.raises(SpecDecodeError, match="loaded in float32"):
        load_or_calibrate(tiny_llama, dtype="bfloat16")
