"""AWRS and sequential Monte Carlo under a constraint (:mod:`specdecode.constraints.awrs`).

The references are enumerated here: on a tiny byte-level model whose head favours a few
letters, the grammar ``(ab|ac|b)`` has four token sequences (``a b``, ``ab``, ``a c``, ``b``,
each then EOS). The locally masked sampler picks the first token by its unconstrained
probability among ``a``, ``ab`` and ``b``, whatever the model thinks of the continuations;
the global constrained distribution weighs each whole sequence by its probability. On the
model below the two differ by a total variation of about 0.35.
"""

import math
from collections import Counter

import pytest
import torch

from lossless import chi_square_pvalue
from specdecode.constraints import compile_constraint
from specdecode.constraints.awrs import awrs_draw, smc
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.sampling import SamplingConfig
from test_constraints import byte_model, mask_of

pytestmark = pytest.mark.usefixtures("private_cache")

REGEX = r"(ab|ac|b)"


def favouring(seed: int = 2, letters=("a", "b", "c", "d", "ab"), boost: float = 6.0):
    """The byte model with a head bias of ``boost`` on EOS and ``letters`` (so a grammar over
    them has most of the mass, and rejection needs few draws; "d" is likely but never allowed)."""
    lm = byte_model(seed=seed)
    head = lm.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight.data.copy_(head.weight.data)
    biased.bias.data.zero_()
    biased.bias.data[[0, *(lm.tokenizer.convert_tokens_to_ids(t) for t in letters)]] = boost
    lm.model.lm_head = biased
    return lm


@pytest.fixture(scope="module")
def lm():
    return favouring()


@pytest.fixture(scope="module")
def setting(lm):
    constraint = compile_constraint(lm, regex=REGEX)
    prompt = lm.tokenizer.encode("ab c", add_special_tokens=False)
    return constraint, prompt, enumerate_sequences(lm, constraint, prompt, depth=4)


@torch.inference_mode()
def enumerate_sequences(loaded, constraint, prompt, depth):
    """Every grammar-complete token sequence (EOS last) of at most ``depth`` tokens, with its
    probability under the model (temperature 1) and under the locally masked sampler."""
    joint, masked = {}, {}

    def visit(ids, matcher, p_model, p_masked):
        p = loaded.model(torch.tensor([prompt + ids])).logits[0, -1].double().softmax(-1)
        allowed = mask_of(matcher, p.shape[0], loaded.eos_token_ids)
        z = float(p[allowed].sum())
        for t in allowed.nonzero().flatten().tolist():
            if t in loaded.eos_token_ids:
                joint[tuple(ids + [t])] = p_model * float(p[t])
                masked[tuple(ids + [t])] = p_masked * float(p[t]) / z
            elif len(ids) + 1 < depth:
                assert matcher.consume_token(t)
                visit(ids + [t], matcher, p_model * float(p[t]), p_masked * float(p[t]) / z)
                matcher.rollback(1)

    visit([], constraint.matcher(), 1.0, 1.0)
    total = sum(joint.values())
    return {"global": {k: v / total for k, v in joint.items()}, "masked": masked, "total": total}


def tv(counts: Counter, probs: dict) -> float:
    n = sum(counts.values())
    keys = set(counts) | set(probs)
    return 0.5 * sum(abs(counts.get(k, 0) / n - probs.get(k, 0.0)) for k in keys)


def test_the_setting_is_one_where_local_masking_is_biased(setting):
    _, _, ref = setting
    assert len(ref["global"]) == 4 and math.isclose(sum(ref["masked"].values()), 1.0, abs_tol=1e-9)
    assert tv(Counter({k: v for k, v in ref["masked"].items()}), ref["global"]) > 0.3


# ---- (1) mask, and AWRS alone, sample the locally masked joint -------------------------------
def test_mask_sampling_follows_the_locally_masked_joint(lm, setting):
    constraint, prompt, ref = setting
    decoder = build_decoder("ar", lm)
    counts: Counter = Counter()
    for seed in range(600):
        cfg = SamplingConfig(1.0, seed=seed, coupling="residual")
        r = decoder.generate_ids(prompt, max_new_tokens=4, sampling=cfg, constraint=constraint)
        counts[tuple(r.token_ids)] += 1
    assert chi_square_pvalue(counts, ref["masked"]) > 1e-3
    assert tv(counts, ref["global"]) > 0.25  # and so not the global one


def test_awrs_alone_samples_what_mask_samples(lm, setting):
    """K = 1: the first accepted token of a draw without replacement follows the masked
    conditional, so the sequences follow the locally masked joint (not the global one)."""
    constraint, prompt, ref = setting
    counts: Counter = Counter()
    for seed in range(600):
        o = smc(lm, prompt, constraint, SamplingConfig(1.0, seed=seed), 4, particles=1)
        counts[tuple(o.token_ids)] += 1
    assert chi_square_pvalue(counts, ref["masked"]) > 1e-3
    assert tv(counts, ref["global"]) > 0.25


# ---- (2) the weight: an unbiased estimate of Z, whatever token was accepted -------------------
@pytest.mark.parametrize("fallback", [False, True])
def test_awrs_weight_is_an_unbiased_estimate_of_the_allowed_mass(fallback):
    """A peaked distribution over 300 tokens, a third of them allowed (the two likeliest not):
    the tokens follow p restricted to the allowed ones (chi-square), the mean weight is Z
    within 4 standard errors (and 2%), and so is the mean weight given each of the three
    likeliest accepted tokens (properly weighted: E[W | x] = Z). ``fallback``: the full mask
    finishes a draw after 2 rejections (the cap on a draw's checks) and all of this still holds."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, generator=gen, dtype=torch.float64) * 2.0
    probs = logits.softmax(-1)
    allowed_set = set(torch.randperm(300, generator=gen)[:100].tolist()) - set(probs.topk(2).indices.tolist())
    z = float(probs[sorted(allowed_set)].sum())
    mask = torch.zeros(300, dtype=torch.bool)
    mask[sorted(allowed_set)] = True
    n = 20000
    tokens, weights, checks, masked = [], [], 0, 0
    for _ in range(n):
        if fallback:
            d = awrs_draw(probs, lambda t: t in allowed_set, gen, mask=lambda: mask, max_rejects=2)
        else:
            d = awrs_draw(probs, lambda t: t in allowed_set, gen)
        tokens.append(d.token)
        weights.append(d.weight)
        checks += d.checks
        masked += d.masked
    assert (masked > n / 20) == fallback and (checks / n < 3) == fallback
    w = torch.tensor(weights, dtype=torch.float64)
    se = float(w.std()) / math.sqrt(n)
    assert abs(float(w.mean()) - z) < 4 * se and abs(float(w.mean()) / z - 1) < 0.02
    assert float(w.std()) > 0.01  # a random estimate, not the exact mass computed on the side
    counts = Counter(tokens)
    assert all(t in allowed_set for t in counts)
    assert chi_square_pvalue(counts, {t: float(probs[t]) / z for t in allowed_set}) > 1e-3
    for x, _ in counts.most_common(3):
        wx = w[torch.tensor([t == x for t in tokens])]
        assert abs(float(wx.mean()) - z) < 4 * float(wx.std()) / math.sqrt(len(wx)) + 1e-12
    assert checks / n < 20  # far fewer than the 300 checks of a mask


def test_awrs_dead_end_and_unweighted_draws():
    gen = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    dead = awrs_draw(probs, lambda t: False, gen)
    assert (dead.token, dead.weight, dead.checks) == (None, 0.0, 3)  # a token of mass 0 is never drawn
    only = awrs_draw(probs, lambda t: t == 2, gen)
    assert only.token == 2 and math.isclose(only.weight, 0.2)  # the last token with mass: Z exactly
    plain = awrs_draw(probs, lambda t: True, gen, weighted=False)
    assert plain.checks == 1 and math.isnan(plain.weight)


# ---- (3) SMC approaches the global constrained distribution -----------------------------------
PARTICLES, RUNS, TOLERANCE = 32, 300, 0.06


def test_smc_approaches_the_global_constrained_distribution(lm, setting):
    """K = 32 particles, 300 runs: the answers' total variation from the enumerated global
    distribution is below 0.06 (the masked joint is about 0.35 away), and the mean of the SMC
    estimate of P(valid) is the enumerated one within 5% (the weights are unbiased)."""
    constraint, prompt, ref = setting
    counts: Counter = Counter()
    evidence = []
    for seed in range(RUNS):
        o = smc(lm, prompt, constraint, SamplingConfig(1.0, seed=seed), 6, particles=PARTICLES)
        assert o.finish_reason == "eos"
        counts[tuple(o.token_ids)] += 1
        evidence.append(math.exp(o.log_evidence))
    assert tv(counts, ref["global"]) < TOLERANCE
    assert tv(counts, ref["global"]) < tv(counts, ref["masked"]) / 4
    assert abs(sum(evidence) / RUNS / ref["total"] - 1) < 0.05


# ---- (4) AWRS never emits a grammar-invalid output --------------------------------------------
@pytest.mark.parametrize("particles", [1, 4])
def test_awrs_outputs_are_always_valid(particles):
    lm = favouring(seed=5, letters=("a", "b", "c", "d", "ab", "x"))
    constraint = compile_constraint(lm, regex=r"(ab|a|b|c)+d(c|ab)?")
    prompt = lm.tokenizer.encode("abcabd", add_special_tokens=False)
    decoder = build_decoder("ar", lm)
    from specdecode.constraints import awrs

    seen = Counter()
    for seed in range(60):
        r = awrs.generate(
            decoder, prompt, max_new_tokens=12, sampling=SamplingConfig(1.0, seed=seed),
            constraint=constraint, particles=particles,
        )  # fmt: skip
        seen[r.finish_reason] += 1
        body = [t for t in r.token_ids if t not in lm.eos_token_ids]
        m = constraint.matcher()
        assert m.validate_tokens(body) == len(body), r.text
        if r.finish_reason == "eos":
            assert m.consume_tokens(body) and m.is_accepting(), r.text
        else:
            assert r.finish_reason == "length" and len(r.token_ids) == 12
    assert seen["eos"] > 20


# ---- (5) bad input: one line, before any model loads -----------------------------------------
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--constraint-sampling", "awrs", "--temperature", "1"], "awrs samples under a constraint"),
        (["--regex", "a+", "--constraint-sampling", "awrs", "--temperature", "1", "--particles", "0"],
         "--particles must be from 1 to 1024, got 0"),
        (["--regex", "a+", "--constraint-sampling", "awrs"], "give a temperature > 0"),
        (["--regex", "a+", "--particles", "4", "--temperature", "1"], "needs --constraint-sampling awrs"),
        (["--regex", "a+", "--constraint-sampling", "awrs", "--temperature", "1", "--method", "pld"],
         "without speculation"),
        (["--regex", "a+", "--constraint-sampling", "awrs", "--temperature", "1", "--top-p", "0.9"],
         "top-k and top-p"),
    ],
)  # fmt: skip
def test_cli_bad_awrs_options_are_one_line(capsys, monkeypatch, argv, message):
    from specdecode import api
    from specdecode.cli import main

    monkeypatch.setattr(api, "get_decoder", lambda *a, **k: pytest.fail("loaded a model"))
    code = main(["generate", *argv, "hello"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_api_bad_awrs_options_before_loading(monkeypatch):
    import specdecode
    from specdecode import api

    monkeypatch.setattr(api, "get_decoder", lambda *a, **k: pytest.fail("loaded a model"))
    for kwargs, message in (
        ({"constraint_sampling": "awrs", "temperature": 1.0}, "under a constraint"),
        ({"regex": "a", "constraint_sampling": "sample"}, "must be mask or awrs"),
        ({"regex": "a", "constraint_sampling": "awrs", "temperature": 1.0, "particles": 2.5}, "whole number"),
        ({"regex": "a", "constraint_sampling": "awrs", "temperature": 0.0}, "temperature > 0"),
    ):
        with pytest.raises(SpecDecodeError, match=message):
            specdecode.generate("hi", **kwargs)
        with pytest.raises(SpecDecodeError, match=message):
            list(specdecode.stream("hi", **kwargs))


def test_generate_and_stream_through_the_decoder(lm, setting):
    """The decoder's view: the same seed gives the same answer (stream: one piece, at the end)."""
    from specdecode.constraints import awrs

    constraint, prompt, ref = setting
    decoder = build_decoder("ar", lm)
    kwargs = dict(max_new_tokens=4, sampling=SamplingConfig(1.0, seed=3), constraint=constraint, particles=4)
    r = awrs.generate(decoder, prompt, **kwargs)
    (piece,) = list(awrs.stream(decoder, prompt, **kwargs))
    assert tuple(r.token_ids) in ref["global"] and r.finish_reason == "eos" and r.method_ran == "awrs-smc-4"
    assert (piece.token_ids, piece.text, piece.finish_reason) == (r.token_ids, r.text, "eos")
    # one batched forward per token after the prefill, until the longest particle ended
    assert len(r.token_ids) - 1 <= r.steps <= 3
