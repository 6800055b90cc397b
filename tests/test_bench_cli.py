"""End to end: `specdecode bench` on a tiny model built in code, 3 prompts, 8 new tokens."""

import argparse
import json
import os

import pytest
import torch

from specdecode.errors import SpecDecodeError

METHODS = "ar,hf-ar,hf-pld,pld"


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "t3 t5 t7 t3 t5 t9 t3 t5 t7 t3", "category": "copy", "id": "a"},
        {"turns": ["t10 t11 t12 t10 t11 t12", "ignored"], "category": "copy", "question_id": 2},
        {"prompt": "t20 t21 t22 t23", "category": "other"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def parse(argv):
    from specdecode.cli import bench

    parser = argparse.ArgumentParser(prog="specdecode")
    sub = parser.add_subparsers(dest="command")
    bench.add_parser(sub)
    return parser.parse_args(["bench", *argv])


@pytest.fixture
def tiny_target(tiny_llama, monkeypatch):
    import specdecode.models.loader as loader

    monkeypatch.setattr(loader, "load_model", lambda *a, **kw: tiny_llama)
    return tiny_llama


def _mean(xs):
    return sum(xs) / len(xs)


def assert_summary_follows_the_runs(data: dict) -> None:
    """Every summary figure is what the per-prompt runs in the same file give (Spec-Bench's
    definitions: tokens/s a mean over prompts, speedup a ratio of means, mean accepted pooled
    over steps, memory the peak), and each run's step bookkeeping adds up."""
    runs = {m: [p["results"][m] for p in data["prompts"]] for m in data["summary"]}
    base = runs[data["meta"]["baseline"]]
    for m, s in data["summary"].items():
        rs = runs[m]
        for r in rs:
            assert r["tokens_per_second"] == pytest.approx(r["new_tokens"] / r["seconds"])
            assert r["new_tokens"] == len(r["token_ids"])
            assert r["steps"] == len(r["accepted_lengths"]) and min(r["accepted_lengths"]) >= 1
            # the prefill yields one token: always for the project's methods and hf-ar, and for
            # hf-pld here, where this random model rejects the prompt-lookup draft of its prefill
            assert sum(r["accepted_lengths"]) == r["new_tokens"] - 1, (m, r)
        tps = _mean([r["tokens_per_second"] for r in rs])
        assert s["tokens_per_second"] == pytest.approx(tps)
        assert s["speedup"] == pytest.approx(tps / _mean([r["tokens_per_second"] for r in base]))
        lengths = [n for r in rs for n in r["accepted_lengths"]]
        assert s["mean_accepted"] == pytest.approx(_mean(lengths))
        assert s["accept_histogram"] == {str(n): lengths.count(n) for n in sorted(set(lengths))}
        assert s["peak_memory_mb"] == max(r["peak_memory_mb"] for r in rs) > 0
        if s["step_ms"] is not None:
            for phase, ms in s["step_ms"].items():
                assert ms == pytest.approx(_mean([1000 * r["phase_seconds"][phase] / r["steps"] for r in rs]))


def test_bench_cli_end_to_end(tiny_target, prompts_file, tmp_path, capsys, monkeypatch):
    from specdecode.cli import bench

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    args = parse(
        ["--methods", METHODS, "--prompts", str(prompts_file), "--max-new-tokens", "8", "--warmup", "1"]
        + [
            "--out",
            str(out),
            "--no-progress",
            "--raw",
            "--method-option",
            "hf-pld.prompt_lookup_num_tokens=4",
        ]
    )
    assert bench.run(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "hf-pld" in printed and "wrote" in printed
    # no curve cached: the run says that pld sizes its drafts from the fallback, and how to fix it
    note = next(line for line in (captured.out + captured.err).splitlines() if "no latency curve" in line)
    assert "pld" in note and "--calibrate" in note and "hf-pld" not in note

    data = json.loads(out.read_text())
    assert data["complete"] is True and data["interrupted"] is False
    assert list(data["summary"]) == ["ar", "hf-ar", "hf-pld", "pld"]
    for m, s in data["summary"].items():
        for k in (
            "tokens_per_second",
            "speedup",
            "mean_accepted",
            "prompts",
            "identical_to_ar",
            "near_ties",
            "peak_memory_mb",
        ):
            assert k in s, (m, k)
        assert s["prompts"] == 3
        # every method must reproduce ar (or differ only at a floating-point near-tie)
        assert s["identical_to_ar"] + s["near_ties"] == 3, (m, s)
        assert s["real_errors"] == 0
    assert_summary_follows_the_runs(data)
    for p in data["prompts"]:  # no EOS in 8 tokens from this model: every run goes the full length
        assert {(r["new_tokens"], r["finish_reason"]) for r in p["results"].values()} == {(8, "length")}
    assert data["summary"]["hf-ar"]["speedup"] == pytest.approx(1.0)
    assert data["summary"]["hf-ar"]["mean_accepted"] == pytest.approx(1.0)
    assert data["summary"]["ar"]["mean_accepted"] == pytest.approx(1.0)
    assert set(data["categories"]) == {"copy", "other"}
    assert set(data["categories"]["copy"]) == {"ar", "hf-ar", "hf-pld", "pld"}
    assert [p["id"] for p in data["prompts"]] == ["a", "2", "3"]
    one = data["prompts"][0]["results"]["pld"]
    assert {
        "new_tokens",
        "seconds",
        "tokens_per_second",
        "token_ids",
        "accepted_lengths",
        "identical_to_ar",
    } <= set(one)
    meta = data["meta"]
    for k in (
        "model",
        "device",
        "dtype",
        "torch",
        "transformers",
        "machine",
        "date",
        "command",
        "max_new_tokens",
    ):
        assert k in meta
    assert meta["max_new_tokens"] == 8 and meta["baseline"] == "hf-ar" and meta["reference"] == "ar"
    from specdecode.machine import cpu_model

    assert meta["machine"]["cores"] == os.cpu_count() and meta["machine"]["cpu"] == cpu_model()
    assert meta["machine"]["torch_threads"] == torch.get_num_threads()
    assert meta["methods"] == ["ar", "hf-ar", "hf-pld", "pld"] and meta["n_prompts"] == 3
    assert meta["prompts_done"] == 3 and meta["warmup"] == 1 and meta["seed"] is None
    assert meta["method_options"]["hf-pld"]["prompt_lookup_num_tokens"] == 4

    md = (tmp_path / "r.md").read_text()
    assert "| method | tokens/s |" in md and "| pld |" in md
    # the step-time split: for the project's methods only
    assert "Where a step's time goes" in md
    assert set(data["summary"]["pld"]["step_ms"]) == {"draft", "forward", "verify", "learn"}
    assert data["summary"]["hf-ar"]["step_ms"] is None
    for name in ("r-speedup.png", "r-accept.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "r-latency.png").exists()  # no calibration cached

    # compare: a result against itself shows zero change
    cargs = parse(["--compare", str(out), str(out)])
    assert bench.run(cargs) == 0
    assert "(+0.00)" in capsys.readouterr().out


def test_interrupt_keeps_finished_prompts(tiny_llama, prompts_file, tmp_path, monkeypatch):
    import specdecode.bench.runner as runner
    from specdecode.bench.datasets import read_jsonl

    real = runner.timed_run
    calls = []

    def stop_on_second_prompt(r, prompt_ids, **kw):
        calls.append(prompt_ids)
        if len({tuple(c) for c in calls}) > 1:
            raise KeyboardInterrupt
        return real(r, prompt_ids, **kw)

    monkeypatch.setattr(runner, "timed_run", stop_on_second_prompt)
    out = tmp_path / "r.json"
    cfg = runner.BenchConfig(
        methods=["ar", "hf-ar"], max_new_tokens=4, warmup=0, out=out, plots=False, progress=False, raw=True
    )
    res = runner.run_bench(cfg, target=tiny_llama, prompts=read_jsonl(prompts_file), log=lambda m: None)
    assert res.interrupted
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and data["complete"] is False
    assert [p["id"] for p in data["prompts"]] == ["a"]
    assert data["summary"]["ar"]["prompts"] == 1
    assert (tmp_path / "r.md").read_text().count("Interrupted") == 1


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--methods", "ar,nope"], "unknown method 'nope'"),
        (["--methods", "ar,ar"], "listed twice"),
        (["--methods", "ar,hf-assisted"], "needs a draft model"),
        (["--methods", "ar", "--method-option", "pld.draft_len=3"], "not among --methods"),
        (["--methods", "pld", "--method-option", "pld.nope=3"], "takes no option"),
        (["--methods", "pld", "--method-option", "pld_draft_len=3"], "METHOD.KEY=VALUE"),
        (["--methods", "ar", "--max-new-tokens", "0"], "--max-new-tokens"),
    ],
)
def test_bad_input_fails_before_loading(argv, words, prompts_file, monkeypatch):
    import specdecode.models.loader as loader
    from specdecode.cli import bench

    def no_loading(*a, **kw):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(loader, "load_model", no_loading)
    with pytest.raises(SpecDecodeError, match=words):
        bench.run(parse([*argv, "--prompts", str(prompts_file), "--no-progress"]))


def test_bad_prompt_files_fail_before_loading(tmp_path, monkeypatch):
    import specdecode.models.loader as loader
    from specdecode.cli import bench

    monkeypatch.setattr(loader, "load_model", lambda *a, **kw: pytest.fail("loaded a model"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "fine"}\n{broken\n')
    with pytest.raises(SpecDecodeError, match="line 3"):
        bench.run(parse(["--methods", "ar", "--prompts", str(bad)]))
    with pytest.raises(SpecDecodeError, match="not found"):
        bench.run(parse(["--methods", "ar", "--prompts", str(tmp_path / "missing.jsonl")]))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SpecDecodeError, match="no prompts"):
        bench.run(parse(["--methods", "ar", "--prompts", str(empty)]))


def test_near_tie_classification(tiny_llama):
    from specdecode.bench.measure import check_identity
    from specdecode.bench.metrics import PromptRecord

    prompt = [3, 4, 5]
    with torch.inference_mode():
        logits = tiny_llama.model(torch.tensor([prompt])).logits[0, -1]
    top2 = torch.topk(logits, 3).indices.tolist()
    ref = PromptRecord("p", "c", "ar", 3, 1, 1.0, token_ids=[top2[0]])
    other = PromptRecord("p", "c", "x", 3, 1, 1.0, token_ids=[top2[1]])
    gap = float(logits[top2[0]] - logits[top2[1]])
    check_identity(tiny_llama, prompt, ref, other, {0}, tolerance=gap * 2)
    assert other.identical_to_ar is False and other.first_difference == 0 and other.near_tie is True
    assert other.tie_gap == pytest.approx(gap, abs=1e-4)
    check_identity(tiny_llama, prompt, ref, other, {0}, tolerance=gap / 2)
    assert other.near_tie is False
    same = PromptRecord("p", "c", "y", 3, 1, 1.0, token_ids=[top2[0]])
    check_identity(tiny_llama, prompt, ref, same, {0}, tolerance=0.0)
    assert same.identical_to_ar is True and same.near_tie is None


def _config(methods, **kw):
    from specdecode.bench.runner import BenchConfig

    return BenchConfig(methods=methods, max_new_tokens=6, warmup=0, out=None, progress=False, raw=True, **kw)


def test_hf_assisted_with_a_draft_model(tiny_llama):
    from specdecode.bench.datasets import Prompt
    from specdecode.bench.runner import run_bench
    from specdecode.models.testing import tiny_model_for_tests

    draft = tiny_model_for_tests(seed=1)  # same vocabulary, other weights
    res = run_bench(
        _config(["ar", "hf-assisted"]), target=tiny_llama, draft=draft, prompts=[Prompt("a", "c", "t3 t4 t5")]
    )
    s = res.result["summary"]["hf-assisted"]
    assert s["identical_to_ar"] + s["near_ties"] == 1
    # counted on the target's forwards only: what each committed, bonus included, the prefill's
    # own tokens not counted
    (run,) = [rec for rec in res.records if rec.method == "hf-assisted"]
    assert run.steps == len(run.accepted_lengths) and min(run.accepted_lengths) >= 1
    assert sum(run.accepted_lengths) <= run.new_tokens - 1
    assert s["mean_accepted"] == pytest.approx(sum(run.accepted_lengths) / run.steps)
    assert res.result["meta"]["draft"] == draft.name


def test_unbridgeable_drafts_fail_before_measuring(tiny_llama, monkeypatch):
    import specdecode.bench.runner as runner
    from specdecode.bench import baselines
    from specdecode.bench.datasets import Prompt
    from specdecode.models.testing import tiny_model_for_tests

    monkeypatch.setattr(runner, "timed_run", lambda *a, **kw: pytest.fail("measuring started"))
    other_vocab = tiny_model_for_tests(vocab_size=80, seed=2)
    prompts = [Prompt("a", "c", "t3 t4 t5")]
    # the project's draft-model: its own bridge check refuses a word-level tokenizer
    with pytest.raises(SpecDecodeError, match="bridged"):
        runner.run_bench(
            _config(["ar", "draft-model"]), target=tiny_llama, draft=other_vocab, prompts=prompts
        )

    # hf-assisted: a tokenizer that does not round-trip text, and a generate() that fails
    class Lossy:  # every round trip adds a character
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [5] * (len(text) + 1)}

        def decode(self, ids, **kw):
            return "w" * len(ids)

        def convert_ids_to_tokens(self, ids):
            return ["x"] * len(ids)

        def get_vocab(self):
            return {}

    lossy = tiny_model_for_tests(vocab_size=80, seed=2)
    lossy.tokenizer = Lossy()
    with pytest.raises(SpecDecodeError, match="does not round-trip"):
        baselines.check_bridgeable(tiny_llama, lossy)

    def broken_generate(*a, **kw):
        raise RuntimeError("cannot reshape tensor of 0 elements")

    monkeypatch.setattr(tiny_llama.model, "generate", broken_generate)
    with pytest.raises(SpecDecodeError, match="cannot be bridged"):
        runner.run_bench(
            _config(["ar", "hf-assisted"]), target=tiny_llama, draft=other_vocab, prompts=prompts
        )


def test_unwritable_out_fails_before_loading(tmp_path, prompts_file, monkeypatch):
    """--out is probed by writing a file beside it, before any prompt runs: permission bits
    alone say nothing to root, so the cases are ones that fail for root too."""
    import specdecode.models.loader as loader
    from specdecode.cli import bench

    monkeypatch.setattr(loader, "load_model", lambda *a, **kw: pytest.fail("loaded a model"))
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    (tmp_path / "taken.json").mkdir()
    (tmp_path / "r.md").mkdir()
    cases = [
        ("/proc/specdecode-bench.json", "cannot create a file in /proc"),
        (str(a_file / "r.json"), "plain-file is a file, not a folder"),
        (str(a_file / "sub" / "r.json"), "plain-file is a file, not a folder"),
        (str(tmp_path / "taken.json"), "taken.json is a folder, not a file"),
        (str(tmp_path / "r.json"), "r.md is a folder, not a file"),  # the Markdown beside it
        (str(tmp_path / "missing" / "r.json"), "the folder for --out does not exist"),
        (str(tmp_path / "r.txt"), "must name a .json file"),
    ]
    for out, words in cases:
        with pytest.raises(SpecDecodeError, match=words):
            bench.run(parse(["--methods", "ar", "--prompts", str(prompts_file), "--out", out]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-file", "prompts.jsonl", "r.md", "taken.json"]


@pytest.mark.parametrize("seed", ["-1", str(2**64 - 2)])  # prompt i samples with seed + i: 3 prompts
def test_seed_out_of_range_fails_before_loading(seed, prompts_file, monkeypatch):
    import specdecode.models.loader as loader
    from specdecode.cli import bench

    monkeypatch.setattr(loader, "load_model", lambda *a, **kw: pytest.fail("loaded a model"))
    with pytest.raises(SpecDecodeError, match="--seed must be a whole number"):
        bench.run(parse(["--methods", "ar", "--prompts", str(prompts_file), "--seed", seed]))


def test_compare_names_the_file_and_field(tmp_path, capsys):
    from specdecode.cli import main

    good = {"summary": {"ar": {"tokens_per_second": 10.0, "speedup": 1.0}}, "meta": {}}
    bad = {"summary": {"ar": {"tokens_per_second": "12.5", "speedup": 1.0}}, "meta": {}}
    (tmp_path / "old.json").write_text(json.dumps(good))
    (tmp_path / "new.json").write_text(json.dumps(bad))
    code = main(["bench", "--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'new.json'}: summary.ar.tokens_per_second must be a number or null" in err


def test_sigterm_keeps_finished_prompts(tiny_target, prompts_file, tmp_path, monkeypatch, capsys):
    """SIGTERM during the run saves the partial result as Ctrl-C does, with exit status 143,
    and the old SIGTERM handler is back afterwards (the subprocess case: test_cli_process.py)."""
    import os
    import signal

    import specdecode.bench.runner as runner
    from specdecode.cli import bench

    real, prompts_seen = runner.timed_run, []

    def terminate_on_second_prompt(r, prompt_ids, **kw):
        prompts_seen.append(tuple(prompt_ids))
        if len(set(prompts_seen)) > 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(r, prompt_ids, **kw)

    monkeypatch.setattr(runner, "timed_run", terminate_on_second_prompt)
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "r.json"
    args = parse(["--methods", "ar,hf-ar", "--prompts", str(prompts_file), "--max-new-tokens", "4"]
                 + ["--warmup", "0", "--raw", "--no-progress", "--no-plots", "--out", str(out)])  # fmt: skip
    assert bench.run(args) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and data["complete"] is False
    assert [p["id"] for p in data["prompts"]] == ["a"]


def test_check_draft_is_one_rule_for_every_method():
    from types import SimpleNamespace

    from specdecode.models.pairing import check_draft

    needs = SimpleNamespace(name="hf-assisted", needs_draft=True)
    plain = SimpleNamespace(name="ar", needs_draft=False)
    cpu, meta = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=torch.device("meta"))
    for draft in (None, ""):
        with pytest.raises(SpecDecodeError) as e:
            check_draft(needs, draft)
        assert str(e.value) == (
            "method 'hf-assisted' needs a draft model: pass --draft MODEL (or --draft default)"
        )
    check_draft(needs, "default")  # a name, before loading
    check_draft(plain, None)
    check_draft(needs, cpu, cpu)
    with pytest.raises(SpecDecodeError) as e:
        check_draft(needs, meta, cpu)
    assert str(e.value) == ("the draft model is on meta but the target is on cpu: load both on one device")
