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
    assert c.threads == torch.get_num_threads() and c.contexts == [16] and c.grid == [c.seconds]
    assert (c.extra["repeats"], c.extra["torch"], len(c.extra["medians"][0])) == (2, torch.__version__, 3)
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
    assert path == tmp_path / "calibration" / f"{tiny_llama.key}-cpu-float32-t{torch.get_num_threads()}.json"

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


# --------------------------------------------------------------------------- threads, dtype, context


def grid_curve(**kw):
    d = dict(
        ns=[1, 4, 16], seconds=[0.010, 0.012, 0.020], device="cpu", dtype="float32", model_key="k",
        threads=2, contexts=[32, 512, 1024],
        grid=[[0.010, 0.012, 0.020], [0.012, 0.016, 0.030], [0.014, 0.020, 0.040]],
    )  # fmt: skip
    d.update(kw)
    return LatencyCurve(**d)


def test_the_cache_key_holds_threads_and_dtype(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    one = calibration_path(tiny_llama, threads=1)
    two = calibration_path(tiny_llama, threads=2)
    bf16 = calibration_path(tiny_llama, dtype="bfloat16", threads=1)
    assert len({one, two, bf16}) == 3
    assert one.name.endswith("-float32-t1.json") and bf16.name.endswith("-bfloat16-t1.json")
    threads = torch.get_num_threads()
    assert calibration_path(tiny_llama) == calibration_path(tiny_llama, threads=threads)


def test_a_curve_from_another_thread_count_is_not_used(tiny_llama, tmp_path, monkeypatch):
    from specdecode.files import write_atomic

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    threads = torch.get_num_threads()
    mine = grid_curve(model_key=tiny_llama.key, device_name=cpu_model(), threads=threads)
    write_atomic(calibration_path(tiny_llama), mine.to_json())
    assert read_cached(tiny_llama) == mine
    # the same file claiming another thread count (copied by hand, say) is refused
    other = json.loads(mine.to_json())
    other["threads"] = threads + 1
    write_atomic(calibration_path(tiny_llama), json.dumps(other))
    assert read_cached(tiny_llama) is None
    try:  # and the thread count in use picks the file
        torch.set_num_threads(threads + 1)
        assert calibration_path(tiny_llama).name.endswith(f"-t{threads + 1}.json")
        write_atomic(calibration_path(tiny_llama), json.dumps(other))
        assert read_cached(tiny_llama) is not None
    finally:
        torch.set_num_threads(threads)


def test_version_1_files_load_and_without_threads_are_refused(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    threads = torch.get_num_threads()
    v1 = {
        "format": "specdecode-latency-curve", "version": 1, "ns": [1, 2], "seconds": [0.01, 0.012],
        "device": "cpu", "dtype": "float32", "model_key": tiny_llama.key, "context_len": 128,
        "device_name": cpu_model(), "created": "", "extra": {"repeats": 5, "threads": threads},
    }  # fmt: skip
    c = LatencyCurve.from_json(json.dumps(v1))
    assert (c.threads, c.contexts, c.grid, c.t(2, 5000)) == (threads, [], [], pytest.approx(0.012))
    path = calibration_path(tiny_llama)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(v1))
    assert read_cached(tiny_llama) == c
    del v1["extra"]["threads"]  # a version-1 file that never said its thread count
    path.write_text(json.dumps(v1))
    assert LatencyCurve.from_json(path.read_text()).threads == 0 and read_cached(tiny_llama) is None
    for version in (0, 3):
        with pytest.raises(ValueError, match="version"):
            LatencyCurve.from_json(json.dumps({**v1, "version": version}))


def test_half_written_or_inconsistent_grids_are_refused():
    good = json.loads(grid_curve().to_json())
    assert LatencyCurve.from_json(json.dumps(good)) == grid_curve()
    text = json.dumps(good)
    for cut in (len(text) // 3, len(text) // 2, len(text) - 2):
        with pytest.raises(ValueError):
            LatencyCurve.from_json(text[:cut])
    for bad in (
        {"grid": good["grid"][:2]},  # a row missing
        {"grid": [row[:2] for row in good["grid"]]},  # a timing missing
        {"contexts": [32, 32, 1024]},
        {"contexts": [], "grid": good["grid"]},
        {"grid": [[0.01, 0.012, float("nan")], *good["grid"][1:]]},
        {"threads": -1},
        {"threads": 1.5},
    ):
        with pytest.raises(ValueError):
            LatencyCurve.from_json(json.dumps({**good, **bad}))
    missing = {k: v for k, v in good.items() if k != "threads"}
    with pytest.raises(ValueError, match="missing"):
        LatencyCurve.from_json(json.dumps(missing))


def test_t_interpolates_across_the_context():
    c = grid_curve()
    assert c.t(4) == c.t(4, 32) == pytest.approx(0.012)  # no context: the first row
    assert c.t(4, 0) == pytest.approx(0.012)  # below the first context: the first row
    assert c.t(4, 512) == pytest.approx(0.016)
    assert c.t(4, 272) == pytest.approx(0.014)  # halfway between 32 and 512
    assert c.t(10, 768) == pytest.approx((0.023 + 0.030) / 2)  # between both ns and contexts
    assert c.t(16, 2048) == pytest.approx(0.060)  # beyond: the last growth per token, continued
    assert c.t(1, 2048) == pytest.approx(0.018)


def test_the_curve_is_monotone_in_n_and_context():
    noisy = grid_curve(
        seconds=[0.010, 0.009, 0.020],
        grid=[[0.010, 0.009, 0.020], [0.012, 0.016, 0.015], [0.011, 0.020, 0.040]],
    )
    # each row: out-of-order neighbours averaged (isotonic); then never below the shorter context
    want = [[0.0095, 0.0095, 0.020], [0.012, 0.0155, 0.020], [0.012, 0.020, 0.040]]
    assert [r == pytest.approx(w) for r, w in zip(noisy.grid, want, strict=True)] == [True] * 3
    assert noisy.seconds == noisy.grid[0]
    assert curve(seconds=[0.010, 0.008, 0.016, 0.015]).seconds == pytest.approx(
        [0.009, 0.009, 0.0155, 0.0155]
    )
    # a spike is averaged with what follows, not carried over it as a running maximum would
    spiky = curve(ns=[1, 2, 3, 4, 6], seconds=[0.16, 0.25, 0.35, 0.29, 0.30])
    assert spiky.seconds == pytest.approx([0.16, 0.25, 0.94 / 3, 0.94 / 3, 0.94 / 3])
    for ctx in (None, 0, 100, 512, 700, 1024, 1500, 4000):
        ts = [noisy.t(n, ctx) for n in range(1, 40)]
        assert all(b >= a for a, b in zip(ts, ts[1:], strict=False)), ctx
    for n in (1, 3, 16, 30):
        ts = [noisy.t(n, ctx) for ctx in range(0, 3000, 50)]
        assert all(b >= a for a, b in zip(ts, ts[1:], strict=False)), n


def test_calibrate_at_several_contexts(tiny_llama):
    c = calibrate(tiny_llama, ns=[1, 2, 4], repeats=1, contexts=[8, 64])
    assert (c.contexts, c.context_len, len(c.grid), c.seconds) == ([8, 64], 8, 2, c.grid[0])
    assert all(len(row) == 3 for row in c.grid)
    assert LatencyCurve.from_json(c.to_json()) == c
    # by default the contexts that fit the model (512 positions here: 32 and, with max n 4, not 512)
    assert calibrate(tiny_llama, ns=[1, 4], repeats=1).contexts == [32]


def test_the_policy_reads_the_curve_at_the_context():
    from specdecode.budget import BudgetPolicy

    # at a short context a large tree costs little more than one token; at a long one, a lot more
    c = LatencyCurve(
        ns=[1, 16, 64], seconds=[0.010, 0.011, 0.012], device="cpu", dtype="float32", model_key="k",
        threads=1, contexts=[32, 2048], grid=[[0.010, 0.011, 0.012], [0.012, 0.040, 0.120]],
    )  # fmt: skip
    probs = [0.9, 0.7, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15] + [0.1] * 30
    policy = BudgetPolicy(c, overhead_s=0.0, max_nodes=64)
    short = policy.choose(probs, context=40)
    long = policy.choose(probs, context=2040)
    assert short >= 30 and long <= 8 and policy.choose(probs) == long  # the last context stands
    assert policy.choose(probs, context=40) == short


def test_calibrate_contexts_flag():
    from specdecode.cli.calibrate import _parse_contexts
    from specdecode.errors import SpecDecodeError

    assert _parse_contexts(None) is None and _parse_contexts("1024, 64,64") == [64, 1024]
    for bad in ("", "0,5", "a,b"):
        with pytest.raises(SpecDecodeError, match="--contexts"):
            _parse_contexts(bad)
