"""Prompt sets: the embedded Spec-Bench file and user JSONL files."""

import json

import pytest

from specdecode.bench.datasets import (
    MT_BENCH_CATEGORIES,
    SPEC_BENCH_CATEGORIES,
    Prompt,
    load_prompts,
    read_jsonl,
    select,
    spec_bench_path,
)
from specdecode.errors import SpecDecodeError


def write(tmp_path, lines, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_prompt_turns_ids_categories(tmp_path):
    path = write(
        tmp_path,
        [
            json.dumps({"prompt": "hello"}),
            "",
            json.dumps({"turns": ["first", "second"], "category": "chat", "question_id": 7}),
            json.dumps({"prompt": "x", "id": "abc", "category": "code"}),
        ],
    )
    ps = read_jsonl(path)
    assert ps == [
        Prompt("1", "default", "hello"),
        Prompt("7", "chat", "first", ("first", "second")),
        Prompt("abc", "code", "x"),
    ]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "x"}', "needs 'prompt'"),
        ('{"prompt": 3}', "'prompt' must be a string"),
        ('{"turns": []}', "'turns' must be a non-empty list"),
        ('{"prompt": "   "}', "the prompt is empty"),
        ('{"prompt": "x", "category": 5}', "'category'"),
        ('{"prompt": "x", "id": [1]}', "'id'"),
        # JSON can escape a lone surrogate, which is no character (the tokenizer would fail on it)
        ('{"prompt": "\\ud800"}', "'prompt' holds a lone surrogate \\ud800 at character 0"),
        ('{"turns": ["ok \\udfff"]}', "'turns' holds a lone surrogate \\udfff at character 3"),
        ('{"prompt": "x", "category": "c\\ud800"}', "'category' holds a lone surrogate"),
        ('{"prompt": "x", "id": "\\ud800"}', "'id' holds a lone surrogate"),
    ],
)
def test_malformed_line_names_its_number(tmp_path, bad, words):
    path = write(tmp_path, [json.dumps({"prompt": "fine"}), bad])
    with pytest.raises(SpecDecodeError) as e:
        read_jsonl(path)
    assert "line 2" in str(e.value) and words in str(e.value)


def test_invalid_utf8_names_its_line_and_valid_text_reads(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(SpecDecodeError, match=r"latin1.jsonl, line 2: not valid UTF-8 \(byte 0xe9\)"):
        read_jsonl(path)
    # a byte order mark, a surrogate pair, and a line separator inside a prompt are all fine
    ok = tmp_path / "ok.jsonl"
    ok.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a \\ud83d\\ude00 b\xe2\x80\xa8c"}\r\n{"prompt": "d"}\n')
    assert [p.text for p in read_jsonl(ok)] == ["a \U0001f600 b\u2028c", "d"]


def test_duplicate_ids_missing_and_empty_files(tmp_path):
    with pytest.raises(SpecDecodeError, match="duplicate prompt id"):
        read_jsonl(write(tmp_path, ['{"prompt": "a", "id": 1}', '{"prompt": "b", "id": "1"}']))
    with pytest.raises(SpecDecodeError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(SpecDecodeError, match="no prompts"):
        read_jsonl(write(tmp_path, ["", "  "], "empty.jsonl"))


def test_select_first_n_seeded_and_categories():
    ps = [Prompt(str(i), "a" if i % 2 else "b", f"p{i}") for i in range(20)]
    first = select(ps, n_per_category=3)
    assert [p.id for p in first] == ["0", "2", "4", "1", "3", "5"]  # b first: it appears first
    seeded = select(ps, n_per_category=3, seed=1)
    assert seeded == select(ps, n_per_category=3, seed=1)  # deterministic
    assert seeded != first and len(seeded) == 6
    # drawn prompts keep file order within their category
    b_ids = [int(p.id) for p in seeded if p.category == "b"]
    assert b_ids == sorted(b_ids)
    only_a = select(ps, categories=["a"], n_per_category=2)
    assert [p.id for p in only_a] == ["1", "3"]
    assert len(select(ps)) == 20
    with pytest.raises(SpecDecodeError, match="unknown category c"):
        select(ps, categories=["c"])
    with pytest.raises(SpecDecodeError, match="at least 1"):
        select(ps, n_per_category=0)


def test_spec_bench_file_and_grouping():
    assert spec_bench_path().is_file()
    assert (spec_bench_path().parent / "SPEC_BENCH_LICENSE.md").is_file()
    all_prompts = load_prompts(dataset="spec-bench")
    assert len(all_prompts) == 480
    cats = list(dict.fromkeys(p.category for p in all_prompts))
    assert cats == list(SPEC_BENCH_CATEGORIES)
    assert sum(p.category == "mt_bench" for p in all_prompts) == 80
    ten = load_prompts(dataset="spec-bench", n_per_category=10)
    assert len(ten) == 60
    mt = [p for p in ten if p.category == "mt_bench"]
    assert [p.id for p in mt] == [str(i) for i in range(81, 91)]  # the first 10 (all "writing")


def test_spec_bench_raw_mt_bench_category_and_errors():
    coding = load_prompts(dataset="spec-bench", categories=["coding", "qa"], n_per_category=2)
    assert [p.category for p in coding] == ["coding", "coding", "qa", "qa"]
    assert "coding" in MT_BENCH_CATEGORIES
    with pytest.raises(SpecDecodeError, match="not both"):
        load_prompts(dataset="spec-bench", categories=["mt_bench", "coding"])
    with pytest.raises(SpecDecodeError, match="unknown dataset"):
        load_prompts(dataset="nope")
    with pytest.raises(SpecDecodeError, match="exactly one"):
        load_prompts()
    with pytest.raises(SpecDecodeError, match="unknown category"):
        load_prompts(dataset="spec-bench", categories=["poetry"])


def test_load_prompts_from_file(tmp_path):
    path = write(tmp_path, [json.dumps({"prompt": f"p{i}", "category": "ab"[i % 2]}) for i in range(6)])
    ps = load_prompts(prompts_file=path, n_per_category=2)
    assert [p.text for p in ps] == ["p0", "p2", "p1", "p3"]


def test_round_robin_takes_turns_over_categories():
    from specdecode.bench.datasets import Prompt, round_robin

    ps = [Prompt(f"{c}{i}", c, "x") for c, n in (("a", 3), ("b", 1), ("c", 2)) for i in range(n)]
    assert [p.id for p in round_robin(ps)] == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert round_robin([]) == []
