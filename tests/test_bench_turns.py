"""`bench --turns`: conversations, each method after its own earlier answers, per-turn figures."""

import json

import pytest

from specdecode.bench.conversation import encode_turn
from specdecode.bench.datasets import Prompt, read_jsonl
from specdecode.errors import SpecDecodeError

pytestmark = pytest.mark.usefixtures("private_cache")

# A chat template in the tiny tokenizer's words: t2 opens a user turn, t3 closes it, t4 closes
# an assistant turn, t5 opens the assistant's answer.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}t2 {{ m['content'] }} t3 "
    "{% else %}{{ m['content'] }} t4 {% endif %}{% endfor %}{% if add_generation_prompt %}t5{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model():
    from specdecode.models.testing import tiny_model_for_tests

    return tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3, chat_template=TEMPLATE)


def conversations():
    return [
        Prompt("c1", "chat", "t10 t11 t12 t10 t11", ("t10 t11 t12 t10 t11", "t20 t21 t10 t11")),
        Prompt("s1", "single", "t30 t31 t32 t30 t31"),
        Prompt("c2", "chat", "t40 t41 t40 t41", ("t40 t41 t40 t41", "t42 t40", "t43 t41")),
    ]


def ids(lm, text):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_read_jsonl_keeps_every_turn(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"turns": ["a", "b", "c"], "id": "x"}) + "\n" + json.dumps({"prompt": "d"}) + "\n"
    )
    x, d = read_jsonl(path)
    assert (x.text, x.turns, x.user_turns(), x.user_turns(2), x.user_turns(1)) == (
        "a", ("a", "b", "c"), ["a", "b", "c"], ["a", "b"], ["a"],
    )  # fmt: skip
    assert d.turns == () and d.user_turns() == ["d"]
    path.write_text(json.dumps({"turns": ["a", " "]}) + "\n")
    with pytest.raises(SpecDecodeError, match="line 1: turn 2 is empty"):
        read_jsonl(path)
    path.write_text(json.dumps({"turns": ["a", 3]}) + "\n")
    with pytest.raises(SpecDecodeError, match="list of strings"):
        read_jsonl(path)


def test_the_bundled_mt_bench_questions_have_two_turns():
    from specdecode.bench.datasets import load_prompts

    mt = load_prompts(dataset="spec-bench", categories=["mt_bench"])
    assert len(mt) == 80 and all(len(p.turns) == 2 for p in mt)
    assert all(len(p.turns) == 1 for p in load_prompts(dataset="spec-bench", categories=["qa"]))


def test_encode_turn_with_the_chat_template(chat_model):
    lm = chat_model
    turns = ["t10 t11", "t20 t21", "t30"]
    first = lm.encode_prompt(turns[0])
    assert first == ids(lm, "t2 t10 t11 t3 t5")
    assert encode_turn(lm, turns, [], first, raw=False) == first
    eos = min(lm.eos_token_ids)
    # the answer is cut at its EOS; the conversation holds each earlier answer in its place
    got = encode_turn(lm, turns, [[7, 8, eos]], first, raw=False)
    assert got == ids(lm, "t2 t10 t11 t3 t7 t8 t4 t2 t20 t21 t3 t5")
    got3 = encode_turn(lm, turns, [[7, 8, eos], [9]], first, raw=False)
    assert got3 == ids(lm, "t2 t10 t11 t3 t7 t8 t4 t2 t20 t21 t3 t9 t4 t2 t30 t3 t5")
    with pytest.raises(ValueError):
        encode_turn(lm, turns, [[7]] * 3, first, raw=False)


def test_encode_turn_raw_keeps_the_answer_ids(chat_model):
    lm = chat_model
    first = lm.encode_prompt("t10 t11", raw=True)
    eos = min(lm.eos_token_ids)
    got = encode_turn(lm, ["t10 t11", "t20"], [[7, 8, eos, 9]], first, raw=True)
    assert got == first + [7, 8] + ids(lm, "t20")  # blank lines are no words for this tokenizer


def run(lm, tmp_path, turns, methods=("ar", "hf-ar", "pld"), **kw):
    from specdecode.bench.runner import BenchConfig, run_bench

    cfg = BenchConfig(
        methods=list(methods), max_new_tokens=6, warmup=0, out=tmp_path / "r.json", plots=False,
        progress=False, turns=turns, calibration="off", **kw,
    )  # fmt: skip
    res = run_bench(cfg, target=lm, prompts=conversations(), log=lambda m: None)
    return res, json.loads((tmp_path / "r.json").read_text())


def test_turns_all_runs_each_method_after_its_own_answers(chat_model, tmp_path):
    lm = chat_model
    res, data = run(lm, tmp_path, None)
    # every turn of every conversation, for every method
    assert sorted((r.prompt_id, r.turn) for r in res.records if r.method == "ar") == [
        ("c1", 1), ("c1", 2), ("c2", 1), ("c2", 2), ("c2", 3), ("s1", 1),
    ]  # fmt: skip
    assert set(data["turns"]) == {"1", "2", "3"}
    assert [data["turns"][k]["ar"]["prompts"] for k in ("1", "2", "3")] == [3, 2, 1]
    for k, per in data["turns"].items():
        assert set(per) == {"ar", "hf-ar", "pld"}
        assert set(per["pld"]) == set(data["summary"]["pld"])  # the same fields as the summary
        recs = [r for r in res.records if r.turn == int(k) and r.method == "pld"]
        base = [r for r in res.records if r.turn == int(k) and r.method == "hf-ar"]
        tps = sum(r.tokens_per_second for r in recs) / len(recs)
        assert per["pld"]["tokens_per_second"] == pytest.approx(tps)
        assert per["pld"]["speedup"] == pytest.approx(
            tps / (sum(r.tokens_per_second for r in base) / len(base))
        )
    assert data["summary"]["ar"]["prompts"] == 6  # every turn is a run
    assert data["meta"]["turns"] == "all"

    # each turn's input is the conversation with the method's own earlier answers
    by = {(r.prompt_id, r.turn, r.method): r for r in res.records}
    c2 = conversations()[2]
    for m in ("ar", "hf-ar", "pld"):
        answers = [by["c2", k, m].token_ids for k in (1, 2)]
        first = lm.encode_prompt(c2.text)
        for k in (2, 3):
            want = encode_turn(lm, list(c2.turns), answers[: k - 1], first, raw=False)
            assert by["c2", k, m].prompt_tokens == len(want)
        entry = next(p for p in data["prompts"] if p["id"] == "c2")
        assert entry["turns"]["3"][m]["token_ids"] == by["c2", 3, m].token_ids
        assert entry["results"][m]["token_ids"] == by["c2", 1, m].token_ids
    # lossless methods: the same answers as ar on every turn
    for k in ("1", "2", "3"):
        assert data["turns"][k]["pld"]["identical_to_ar"] == data["turns"][k]["pld"]["prompts"]
    md = (tmp_path / "r.md").read_text()
    assert "## Turn 1" in md and "## Turn 3" in md and "- turns: all" in md


def test_a_method_with_another_first_answer_gets_its_own_second_turn(chat_model, tmp_path, monkeypatch):
    import specdecode.bench.runner as runner

    real = runner.build_runner

    class Wrong:  # pld's answers, with the last token of every first turn changed
        def __init__(self, inner):
            self.inner, self.seen = inner, []

        def generate_ids(self, prompt_ids, **kw):
            out = self.inner.generate_ids(prompt_ids, **kw)
            self.seen.append(list(prompt_ids))
            if len(self.seen) in (1, 3):  # c1 turn 1, c2 turn 1 (s1 is the second call)
                out.token_ids = out.token_ids[:-1] + [(out.token_ids[-1] + 1) % 64 or 7]
            return out

    wrapped = {}

    def build(name, target, **kw):
        r = real(name, target, **kw)
        if name == "pld":
            wrapped[name] = r = Wrong(r)
        return r

    monkeypatch.setattr(runner, "build_runner", build)
    res, data = run(chat_model, tmp_path, 2)
    by = {(r.prompt_id, r.turn, r.method): r for r in res.records}
    assert "3" not in data["turns"]  # --turns 2: the first two turns only
    first = by["c1", 1, "pld"]
    assert first.identical_to_ar is False and first.near_tie is False and first.tie_gap is not None
    second = by["c1", 2, "pld"]
    assert second.context_differs is True and second.tie_gap is None
    # its second turn was asked after its own (changed) first answer, not ar's
    c1 = conversations()[0]
    start = chat_model.encode_prompt(c1.text)
    own = encode_turn(chat_model, list(c1.turns), [first.token_ids], start, raw=False)
    ars = encode_turn(chat_model, list(c1.turns), [by["c1", 1, "ar"].token_ids], start, raw=False)
    assert wrapped["pld"].seen[1] == own != ars
    md = (tmp_path / "r.md").read_text()
    assert "## Outputs that differ from ar" in md
    assert f"| pld | c1 | 1 | {first.first_difference} | {first.tie_gap:.3g} | REAL ERROR |" in md
    if not second.identical_to_ar:
        assert "| pld | c1 | 2 | " in md and "input differs (an earlier turn's answer differed)" in md


def test_first_turn_only_by_default(chat_model, tmp_path):
    res, data = run(chat_model, tmp_path, 1, methods=("ar", "pld"))
    assert "turns" not in data and all(r.turn is None for r in res.records)
    assert all("turns" not in p for p in data["prompts"]) and data["summary"]["ar"]["prompts"] == 3
    assert "## Turn" not in (tmp_path / "r.md").read_text()


def test_turns_flag():
    from specdecode.cli.bench import parse_turns

    assert (parse_turns("all"), parse_turns("ALL"), parse_turns("1"), parse_turns("3")) == (None, None, 1, 3)
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(SpecDecodeError, match="--turns takes 'all' or a whole number"):
            parse_turns(bad)


def test_a_conversation_longer_than_the_context_is_one_clear_error(tmp_path):
    from specdecode.models.testing import tiny_model_for_tests

    lm = tiny_model_for_tests(vocab_size=64, seed=3, chat_template=TEMPLATE, max_position_embeddings=40)
    from specdecode.bench.runner import BenchConfig, run_bench

    long_turn = " ".join(f"t{10 + i % 40}" for i in range(22))
    prompts = [Prompt("p", "chat", "t10 t11", ("t10 t11", long_turn))]
    cfg = BenchConfig(methods=["ar"], max_new_tokens=6, warmup=0, out=None, progress=False, turns=None,
                      calibration="off")  # fmt: skip
    with pytest.raises(SpecDecodeError, match="prompt p, turn 2: .* exceed the model's context of 40"):
        run_bench(cfg, target=lm, prompts=prompts, log=lambda m: None)


def test_bench_command_with_turns_all_raw(tiny_llama, tmp_path, monkeypatch, capsys):
    import argparse

    import specdecode.models.loader as loader
    from specdecode.cli import bench

    monkeypatch.setattr(loader, "load_model", lambda *a, **kw: tiny_llama)
    prompts = tmp_path / "p.jsonl"
    lines = [{"turns": ["t10 t11 t12", "t13 t14", "t15"], "id": "a"}, {"prompt": "t20 t21", "id": "b"}]
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    parser = argparse.ArgumentParser(prog="specdecode")
    bench.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "r.json"
    argv = ["bench", "--methods", "ar,hf-ar,pld", "--prompts", str(prompts), "--max-new-tokens", "5"]
    argv += ["--warmup", "0", "--raw", "--turns", "all", "--out", str(out), "--no-plots", "--no-progress"]
    assert bench.run(parser.parse_args(argv)) == 0
    data = json.loads(out.read_text())
    assert {k: v["ar"]["prompts"] for k, v in data["turns"].items()} == {"1": 2, "2": 1, "3": 1}
    a = next(p for p in data["prompts"] if p["id"] == "a")
    first = tiny_llama.encode_prompt("t10 t11 t12", raw=True)
    for m in ("ar", "hf-ar", "pld"):  # raw: the earlier turns and this method's answers, as ids
        answers = [a["turns"][k][m]["token_ids"] for k in ("1", "2")]
        want = encode_turn(tiny_llama, ["t10 t11 t12", "t13 t14", "t15"], answers, first, raw=True)
        assert a["turns"]["3"][m]["prompt_tokens"] == len(want)
    assert "hf-ar" in capsys.readouterr().out
