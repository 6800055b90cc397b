"""``specdecode audit``: a sound method passes; a wrong resampling rule fails the sampling check,
a wrong KV commit fails the greedy check; the partition behind the sampling test is exact."""

import json
import random
from collections import Counter

import pytest
import torch

from specdecode import engine
from specdecode.audit import AuditConfig, AuditPrompt, audit
from specdecode.cli import main
from specdecode.lossless import PrefixCells, chi_square, pit_values, uniformity, verify_without_residual
from specdecode.models import loader
from specdecode.models.testing import tiny_model_for_tests
from specdecode.target import Target

pytestmark = pytest.mark.usefixtures("private_cache")

V = 16
PROMPTS = [
    AuditPrompt("short", [3, 5, 3, 5, 3]),
    AuditPrompt("loop", [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]),
    AuditPrompt("mixed", [9, 4, 12, 9, 4, 7, 9, 4]),
]
CFG = AuditConfig(samples=200, tokens=8, max_new_tokens=24)
HYBRID = ("hybrid", {"budget": 8})  # a fixed budget: the same drafts on every run


@pytest.fixture(scope="module")
def lm():
    return tiny_model_for_tests(vocab_size=V, seed=1, eos_token_id=None, initializer_range=0.3)


@pytest.fixture(scope="module")
def other(lm):
    """A draft model that is not the target: its q differs from p."""
    return tiny_model_for_tests(vocab_size=V, seed=2, eos_token_id=None, initializer_range=0.3)


@pytest.mark.parametrize(("method", "samples"), [(HYBRID, 200), (("draft-model", {}), 120)])
def test_a_sound_method_passes(lm, other, method, samples):
    cfg = AuditConfig(samples=samples, tokens=8, max_new_tokens=24)
    [r] = audit(lm, [method], PROMPTS, cfg, draft=other)
    assert r.verdict == "PASS", r
    assert r.count("identical") == len(PROMPTS)
    assert r.sampling.pvalue > cfg.alpha
    assert r.sampling.drafted > 1 and r.sampling.accepted > 0.2  # the check saw real drafts


def test_a_wrong_resampling_rule_fails_the_sampling_check(lm, monkeypatch):
    monkeypatch.setattr(engine, "verify", verify_without_residual)
    [r] = audit(lm, [HYBRID], PROMPTS, CFG)
    assert r.count("identical") == len(PROMPTS)  # greedy decoding does not use the rule
    assert r.sampling.pit_pvalue < 1e-6  # every position: the stronger test here
    assert r.sampling.pvalue < 1e-6 and r.verdict == "FAIL"


def test_a_wrong_kv_commit_fails_the_greedy_check(lm, monkeypatch):
    """A chain's commit applied to trees: keep the first scored rows, not the accepted path's."""
    commit = Target.commit
    monkeypatch.setattr(Target, "commit", lambda self, path: commit(self, list(range(len(path)))))
    cfg = AuditConfig(samples=0, max_new_tokens=40)
    [r] = audit(lm, [HYBRID], PROMPTS, cfg)
    assert r.count("different") >= 1 and r.sampling is None
    assert r.verdict == "FAIL"


# ---- the command line -------------------------------------------------------------------------
@pytest.fixture
def prompt_file(tmp_path, lm, monkeypatch):
    monkeypatch.setattr(loader, "load_model", lambda *a, **kw: lm)
    path = tmp_path / "prompts.jsonl"
    lines = [{"id": p.id, "prompt": " ".join(f"t{t}" for t in p.ids)} for p in PROMPTS]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def cli(capsys, *argv):
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_prints_a_verdict_table_and_exits_0_or_1(prompt_file, capsys, monkeypatch):
    args = ["--prompt-file", prompt_file, "--raw", "--max-new-tokens", "16"]
    code, out, _ = cli(capsys, "--method", "ar,pld", "--samples", "100", "--tokens", "8", *args)
    assert code == 0
    header, *rows, note = out.strip().splitlines()
    assert header.split()[:3] == ["method", "greedy", "identical"]
    assert [r.split()[0] for r in rows] == ["ar", "pld"]
    assert all(r.split()[1] == "3/3" and r.split()[-1] == "PASS" for r in rows)
    assert "100 samples of new tokens 1-8" in note

    monkeypatch.setattr(engine, "verify", verify_without_residual)
    code, out, _ = cli(
        capsys,
        "--method",
        "hybrid",
        "--option",
        "budget=8",
        "--samples",
        "150",
        "--tokens",
        "8",
        "--json",
        *args,
    )
    assert code == 1
    result = json.loads(out)
    assert result["verdict"] == "FAIL" and result["sampling_prompt"] == "short"
    [m] = result["methods"]
    assert m["method"] == "hybrid" and m["identical"] == 3 and m["sampling"]["pvalue"] < 1e-3


def test_all_leaves_out_what_cannot_run_here_and_says_why(prompt_file, capsys):
    """Without --draft the draft methods are left out; without trained heads, the head methods."""
    args = ["--prompt-file", prompt_file, "--raw", "--max-new-tokens", "8", "--samples", "0"]
    code, out, err = cli(capsys, "--method", "all", *args)
    assert code == 0
    audited = [r.split()[0] for r in out.strip().splitlines()[1:]]  # --samples 0: no footer line
    assert {"ar", "pld", "hybrid", "suffix"} <= set(audited)
    assert "without --draft, leaving out" in err and "draft-model" not in audited
    for heads in ("medusa", "hydra", "clover"):
        assert heads not in audited and f"leaving out {heads}: " in err and "no trained heads" in err
    assert "kangaroo" not in audited and "leaving out kangaroo: kangaroo: no trained adapter" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "magic"], "unknown method 'magic'"),
        (["--method", "draft-model"], "needs a draft model"),
        (["--method", "pld", "--option", "draft_len=0"], "must be >= 1"),
        (["--method", "ar,pld", "--option", "draft_len=3"], "write METHOD.draft_len=3"),
        (["--method", "ar", "--option", "pld.draft_len=3"], "not audited"),
        (["--method", "pld", "--tokens", "1"], "tokens must be >= 2"),
        (["--method", "pld", "--temperature", "0"], "needs a temperature > 0"),
        (["--method", "pld", "--prompts", "0"], "--prompts must be >= 1"),
        (["--method", "pld", "--alpha", "1.5"], "alpha must be in (0, 1)"),
        (["--method", "pld", "--prompt-file", "/no/such.jsonl"], "prompt file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(loader, "load_model", lambda *a, **kw: pytest.fail("loaded a model"))
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err


# ---- the partition: exact, and fixed by the null alone ------------------------------------------
W = 5
torch.manual_seed(3)
CHAIN = torch.distributions.Dirichlet(torch.ones(W) * 0.6).sample((W + 1,))  # row W: the first token
CHAIN[2, 4] = 0.0  # an impossible transition
CHAIN[2] /= CHAIN[2].sum()


def chain_probs(prefixes):
    return torch.stack([CHAIN[p[-1] if p else W] for p in prefixes])


def exact(outcome):
    prob, prev = 1.0, W
    for t in outcome:
        prob *= float(CHAIN[prev, t])
        prev = t
    return prob


def draw(rng, rows, n=3):
    out, prev = [], W
    for _ in range(n):
        prev = rng.choices(range(W), weights=rows[prev].tolist())[0]
        out.append(prev)
    return tuple(out)


def test_the_cells_partition_the_outcomes_with_their_exact_probabilities():
    cells = PrefixCells(chain_probs, n=300, depth=3)
    assert sum(cells.probs.values()) == pytest.approx(1.0, abs=1e-9)
    mass: Counter = Counter()
    outcomes = [(a, b, c) for a in range(W) for b in range(W) for c in range(W)]
    for o in outcomes:
        if exact(o) > 0:
            mass[cells.cell(o)] += exact(o)
        else:
            assert cells.cell(o) in (None, ("rest", o[:1]), ("rest", ()))  # never a cell of its own
    for c, p in cells.probs.items():
        assert mass[c] == pytest.approx(p, abs=1e-6)
    assert cells.cell((2, 4, 0)) is None or ("rest", ()) == cells.cell((2, 4, 0))


def test_the_cells_test_passes_the_null_and_catches_a_shifted_chain():
    rng = random.Random(0)
    cells = PrefixCells(chain_probs, n=2000, depth=3)
    assert cells.test([draw(rng, CHAIN) for _ in range(2000)])[2] > 1e-3
    shifted = CHAIN.clone()
    shifted[W] = 0.85 * shifted[W] + 0.15 / W  # the first token only, mildly
    assert cells.test([draw(rng, shifted) for _ in range(2000)])[2] < 1e-4
    assert chi_square(Counter({"a": 3}), {"a": 0.0, "b": 1.0})[2] == 0.0  # an impossible outcome


def test_the_transform_is_uniform_for_the_chain_and_not_for_a_shifted_one():
    rng, gen = random.Random(1), torch.Generator().manual_seed(0)

    def values(rows, n=800):
        out = []
        for _ in range(n):
            seq = draw(rng, rows)
            out += pit_values(chain_probs([seq[:t] for t in range(len(seq))]), seq, gen)
        return out

    assert uniformity(values(CHAIN))[2] > 1e-3
    shifted = CHAIN.clone()
    shifted[:, 0] += 0.3  # token 0 more likely after every token
    assert uniformity(values(shifted / shifted.sum(-1, keepdim=True)))[2] < 1e-4
    assert pit_values(chain_probs([(), (2,)]), [2, 4], gen) is None  # an impossible transition
