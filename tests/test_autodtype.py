"""``--dtype auto``: the fastest natively supported dtype, measured once and cached."""

import json

import pytest
import torch

from specdecode.models import autodtype
from specdecode.models.autodtype import auto_dtype, cpu_flags, cpu_has_native_bf16


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert "avx512_bf16" in cpu_flags(str(info))
    assert cpu_has_native_bf16({"avx2", "amx_bf16"}) and cpu_has_native_bf16({"avx512_bf16"})
    assert not cpu_has_native_bf16({"avx2", "avx512f"}) and cpu_flags(str(tmp_path / "none")) == set()


@pytest.fixture
def tiny_by_name(monkeypatch, tmp_path):
    """load_model(name, dtype=...) gives a tiny model in that dtype (the same weights)."""
    from specdecode.models import loader
    from specdecode.models.testing import tiny_model_for_tests

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    made = {}

    def fake_load(name=None, *, device="auto", dtype=None, **kw):
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        if dt not in made:
            made[dt] = tiny_model_for_tests(vocab_size=64, seed=1, dtype=dt)
        return made[dt]

    monkeypatch.setattr(loader, "load_model", fake_load)
    return made


def test_auto_measures_once_and_caches_the_choice(tiny_by_name, monkeypatch, tmp_path):
    monkeypatch.setattr(autodtype, "cpu_has_native_bf16", lambda flags=None: True)
    calls = []

    def timed(name, device, repeats=5):
        calls.append(name)
        return {"float32": [0.050, 0.090], "bfloat16": [0.040, 0.050]}

    monkeypatch.setattr(autodtype, "measure", timed)
    cpu = torch.device("cpu")
    assert auto_dtype("m", cpu) == torch.bfloat16 and calls == ["m"]
    assert auto_dtype("m", cpu) == torch.bfloat16 and calls == ["m"]  # cached
    (path,) = (tmp_path / "calibration").glob("dtype-*.json")
    record = json.loads(path.read_text())
    assert record["dtype"] == "bfloat16" and record["threads"] == torch.get_num_threads()
    assert record["seconds"]["float32"] == [0.050, 0.090]
    # a cache written for another thread count, or a broken one, is measured again
    record["threads"] += 1
    path.write_text(json.dumps(record))
    monkeypatch.setattr(
        autodtype, "measure", lambda *a, **k: calls.append("again") or {"float32": [1, 1], "bfloat16": [2, 2]}
    )
    assert auto_dtype("m", cpu) == torch.float32 and calls == ["m", "again"]
    path.write_text("{ half")
    assert auto_dtype("m", cpu) == torch.float32 and calls == ["m", "again", "again"]


def test_auto_is_float32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(autodtype, "cpu_has_native_bf16", lambda flags=None: False)
    monkeypatch.setattr(autodtype, "measure", lambda *a, **k: pytest.fail("nothing to measure"))
    assert auto_dtype("m", torch.device("cpu")) == torch.float32


def test_measure_times_both_dtypes(tiny_by_name):
    t = autodtype.measure("m", torch.device("cpu"), repeats=1)
    assert set(t) == {"float32", "bfloat16"} and all(len(v) == 2 and min(v) > 0 for v in t.values())
    assert set(tiny_by_name) == {torch.float32, torch.bfloat16}


def test_load_model_resolves_auto(monkeypatch):
    from specdecode.models import loader

    seen = []
    monkeypatch.setattr(autodtype, "auto_dtype", lambda name, dev: seen.append((name, dev)) or torch.float32)
    monkeypatch.setattr(loader, "_resolve_source", lambda name: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        loader.load_model("x", device="cpu", dtype="auto")
    assert seen == [("x", torch.device("cpu"))]
