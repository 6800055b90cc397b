"""Bench metrics on synthetic per-prompt records: no model, no timing."""

import json
import math

import pytest

from specdecode.bench.metrics import (
    PromptRecord,
    acceptance_histogram,
    first_difference,
    identity_summary,
    mean_accepted,
    peak_memory_mb,
    speedup,
    strip_at_eos,
    summarize,
    tokens_per_second,
)
from specdecode.errors import SpecDecodeError


def rec(pid, method, new_tokens, seconds, *, cat="c", lengths=None, ident=None, tie=None, mem=None):
    return PromptRecord(
        prompt_id=pid,
        category=cat,
        method=method,
        prompt_tokens=10,
        new_tokens=new_tokens,
        seconds=seconds,
        accepted_lengths=lengths,
        steps=len(lengths) if lengths is not None else None,
        identical_to_ar=ident,
        near_tie=tie,
        peak_memory_mb=mem,
    )


def test_tokens_per_second_is_the_mean_of_per_prompt_rates():
    rs = [rec("a", "m", 100, 1.0), rec("b", "m", 10, 0.5)]
    # Spec-Bench: mean of (100, 20) = 60, not total tokens / total time = 110 / 1.5
    assert tokens_per_second(rs) == pytest.approx((100 + 20) / 2)
    assert tokens_per_second([]) is None


def test_zero_seconds_counts_as_zero_rate():
    assert rec("a", "m", 5, 0.0).tokens_per_second == 0.0


def test_speedup_is_ratio_of_mean_rates_over_shared_prompts():
    base = [rec("a", "hf-ar", 100, 2.0), rec("b", "hf-ar", 100, 4.0), rec("z", "hf-ar", 1, 1.0)]
    meth = [rec("a", "pld", 100, 1.0), rec("b", "pld", 100, 1.0)]
    # method: mean(100, 100) = 100; baseline over a, b only: mean(50, 25) = 37.5
    assert speedup(meth, base) == pytest.approx(100 / 37.5)
    # not the mean of per-prompt ratios (2 and 4 -> 3)
    assert speedup(meth, base) != pytest.approx(3.0)
    assert speedup(meth, []) is None
    assert speedup(base, base) == pytest.approx(1.0)


def test_mean_accepted_pools_steps_and_skips_unknown():
    rs = [rec("a", "m", 7, 1, lengths=[3, 3]), rec("b", "m", 5, 1, lengths=[1, 1, 1, 1]), rec("c", "m", 9, 1)]
    assert mean_accepted(rs) == pytest.approx(10 / 6)  # pooled, not mean of (3, 1) = 2
    assert mean_accepted([rec("c", "m", 9, 1)]) is None
    assert rs[0].mean_accepted == 3.0 and rs[2].mean_accepted is None


def test_acceptance_histogram():
    rs = [rec("a", "m", 7, 1, lengths=[3, 1, 3]), rec("b", "m", 5, 1, lengths=[2, 1])]
    h = acceptance_histogram(rs)
    assert h == {1: 2, 2: 1, 3: 2}
    assert list(h) == [1, 2, 3]


def test_identity_summary_and_peak_memory():
    rs = [
        rec("a", "m", 1, 1, ident=True, mem=10.0),
        rec("b", "m", 1, 1, ident=False, tie=True, mem=30.0),
        rec("c", "m", 1, 1, ident=False, tie=False),
        rec("d", "m", 1, 1),
    ]
    s = identity_summary(rs)
    assert (s.compared, s.identical, s.differs, s.near_ties, s.real_errors) == (3, 1, 2, 1, 1)
    assert peak_memory_mb(rs) == 30.0
    assert peak_memory_mb([rec("x", "m", 1, 1)]) is None


@pytest.mark.parametrize(
    "ref, out, expected",
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2, 0], [1, 2], None),  # EOS (0) returned by one method only
        ([1, 2, 0], [1, 2, 0, 5], None),  # anything after EOS is ignored
        ([1, 2, 0], [1, 2, 7], 2),  # one stopped, the other went on
        ([1, 2], [1, 2, 7], 2),
        ([], [], None),
    ],
)
def test_first_difference(ref, out, expected):
    assert first_difference(ref, out, eos_ids={0}) == expected


def test_strip_at_eos():
    assert strip_at_eos([4, 0, 5], {0}) == ([4], True)
    assert strip_at_eos([4, 5], {0}) == ([4, 5], False)


def test_summarize_overall_and_by_category():
    rs = []
    for pid, cat, t_base, t_fast in (("a", "qa", 2.0, 1.0), ("b", "qa", 2.0, 1.0), ("c", "rag", 1.0, 0.25)):
        rs.append(rec(pid, "hf-ar", 10, t_base, cat=cat, lengths=[1] * 9, ident=True))
        rs.append(rec(pid, "pld", 10, t_fast, cat=cat, lengths=[3, 3, 3], ident=pid != "c", tie=False))
    summary, cats = summarize(rs, ["hf-ar", "pld"], baseline="hf-ar")
    assert list(summary) == ["hf-ar", "pld"]
    assert set(cats) == {"qa", "rag"}
    s = summary["pld"]
    for k in (
        "tokens_per_second",
        "speedup",
        "mean_accepted",
        "prompts",
        "identical_to_ar",
        "near_ties",
        "peak_memory_mb",
    ):
        assert k in s
    assert s["prompts"] == 3
    assert s["tokens_per_second"] == pytest.approx((10 + 10 + 40) / 3)
    assert s["speedup"] == pytest.approx(((10 + 10 + 40) / 3) / ((5 + 5 + 10) / 3))
    assert s["mean_accepted"] == pytest.approx(3.0)
    assert s["identical_to_ar"] == 2 and s["real_errors"] == 1
    assert s["accept_histogram"] == {"3": 9}
    assert summary["hf-ar"]["speedup"] == pytest.approx(1.0)
    assert summary["hf-ar"]["mean_accepted"] == pytest.approx(1.0)
    assert cats["qa"]["pld"]["speedup"] == pytest.approx(2.0)
    assert cats["rag"]["pld"]["speedup"] == pytest.approx(4.0)
    assert cats["rag"]["pld"]["prompts"] == 1


def test_summarize_without_baseline_or_identity():
    rs = [rec("a", "pld", 10, 1.0)]
    summary, _ = summarize(rs, ["ar", "pld"], baseline="hf-ar")
    assert list(summary) == ["pld"]  # a method without records is left out
    assert summary["pld"]["speedup"] is None
    assert summary["pld"]["identical_to_ar"] is None
    assert summary["pld"]["mean_accepted"] is None


def test_record_round_trip():
    r = rec("a", "m", 7, 0.5, lengths=[2, 2, 2])
    d = r.to_dict()
    assert d["tokens_per_second"] == 14.0 and d["mean_accepted"] == 2.0
    back = PromptRecord.from_dict(d)
    assert back == r
    assert math.isclose(back.tokens_per_second, 14.0)


# ---- helpers of the runner and the baselines that are pure


def test_committed_per_forward_plain_and_speculative():
    from specdecode.bench.baselines import committed_per_forward

    # plain decoding: prompt of 5, 4 new tokens -> 4 forwards, cache 0, 5, 6, 7 before each
    assert committed_per_forward([0, 5, 6, 7], 5, 9) == [1, 1, 1, 1]
    # speculative: the prefill commits 3 (cache then holds 5 + 3 - 1 = 7), then 1, then 4
    assert committed_per_forward([0, 7, 8], 5, 5 + 3 + 1 + 4) == [3, 1, 4]
    assert committed_per_forward([], 5, 5) == []


def test_rotation():
    from specdecode.bench.measure import rotation

    ms = ["a", "b", "c"]
    assert [rotation(ms, i) for i in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


# ---- report and compare


def _result(speed_pld: float, tps_pld: float) -> dict:
    return {
        "complete": True,
        "interrupted": False,
        "meta": {"model": "m", "device": "cpu", "dtype": "float32", "baseline": "hf-ar", "reference": "ar"},
        "summary": {
            "hf-ar": {
                "tokens_per_second": 10.0,
                "speedup": 1.0,
                "mean_accepted": 1.0,
                "prompts": 2,
                "identical_to_ar": 2,
            },
            "pld": {
                "tokens_per_second": tps_pld,
                "speedup": speed_pld,
                "mean_accepted": 2.5,
                "prompts": 2,
                "identical_to_ar": 1,
                "differs_from_ar": 1,
                "near_ties": 1,
                "real_errors": 0,
                "accept_histogram": {"1": 3, "4": 1},
            },
        },
        "categories": {
            "qa": {
                "hf-ar": {"speedup": 1.0, "tokens_per_second": 10.0},
                "pld": {"speedup": speed_pld, "tokens_per_second": tps_pld},
            },
            "rag": {
                "hf-ar": {"speedup": 1.0, "tokens_per_second": 10.0},
                "pld": {"speedup": speed_pld, "tokens_per_second": tps_pld},
            },
        },
        "latency_curve": {
            "ns": [1, 2, 4],
            "seconds": [0.01, 0.012, 0.02],
            "device": "cpu",
            "dtype": "float32",
        },
    }


def test_markdown_report_has_tables():
    from specdecode.bench.report import markdown_report

    md = markdown_report(_result(1.5, 15.0))
    assert "| pld | 15.0 | 1.50x | 2.50 | 1/2 (1 near-tie, 0 real)" in md
    assert "| qa |" in md and "| rag |" in md
    assert "t(n) / t(1)" in md and "| 4 | 20.00 | 2.00 |" in md
    assert "75%" in md  # 3 of 4 steps accepted 1 token


def test_compare_text_reports_deltas():
    from specdecode.bench.report import compare_results, compare_text

    old, new = _result(1.5, 15.0), _result(2.0, 20.0)
    new["summary"]["new-method"] = {"tokens_per_second": 5.0, "speedup": 0.5, "mean_accepted": None}
    rows = {r["method"]: r for r in compare_results(old, new)}
    assert rows["pld"]["speedup"] == (1.5, 2.0)
    assert rows["new-method"]["speedup"] == (None, 0.5)
    text = compare_text(old, new)
    assert "1.50 -> 2.00 (+0.50)" in text
    assert "15.00 -> 20.00 (+33.3%)" in text
    assert "(new) 0.50" in text


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r["summary"]["pld"].update(tokens_per_second="15.0"), "summary.pld.tokens_per_second"),
        (lambda r: r["summary"]["pld"].update(speedup=True), "summary.pld.speedup"),
        (lambda r: r["summary"].update(pld=[1, 2]), "summary.pld must be an object"),
        (lambda r: r["categories"]["qa"]["pld"].update(speedup="x"), "categories.qa.pld.speedup"),
        (lambda r: r.update(categories=[]), "categories must be an object"),
        (lambda r: r["meta"].update(machine={"cpu": 5}), "meta.machine.cpu"),
    ],
)
def test_load_result_names_a_field_compare_cannot_use(tmp_path, edit, field):
    from specdecode.bench.report import load_result

    good = tmp_path / "good.json"
    good.write_text(json.dumps(_result(1.5, 15.0)))
    assert load_result(good)["summary"]["pld"]["speedup"] == 1.5
    bad = _result(1.5, 15.0)
    edit(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SpecDecodeError) as e:
        load_result(path)
    assert str(e.value).startswith(f"{path}: ") and field in str(e.value)


def test_plots_written(tmp_path):
    from specdecode.bench.plots import write_plots

    files = write_plots(_result(1.5, 15.0), tmp_path / "r.json")
    names = sorted(f.name for f in files)
    assert names == ["r-accept.png", "r-latency.png", "r-speedup.png"]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_ms_is_the_mean_per_step_phase_time():
    from specdecode.bench.metrics import PromptRecord, step_ms

    a = PromptRecord("p1", "c", "pld", 5, 10, 1.0, steps=4, phase_seconds={"draft": 0.004, "forward": 0.4})
    b = PromptRecord("p2", "c", "pld", 5, 10, 1.0, steps=2, phase_seconds={"draft": 0.004, "forward": 0.1})
    got = step_ms([a, b])
    assert got["draft"] == pytest.approx((1.0 + 2.0) / 2)
    assert got["forward"] == pytest.approx((100.0 + 50.0) / 2)
    assert step_ms([PromptRecord("p3", "c", "hf-ar", 5, 10, 1.0)]) is None
