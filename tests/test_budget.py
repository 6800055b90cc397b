"""The budget policy: large trees where the forward is flat in n, small ones where it is steep."""

import pytest

from specdecode.budget import BudgetPolicy, fallback_curve, policy_for
from specdecode.cost import LatencyCurve


def make_curve(ns, seconds):
    return LatencyCurve(list(ns), list(seconds), "cpu", "float32", "k")


# Node probabilities of a plausible tree, best first: a few likely nodes, then a long tail.
PROBS = [0.8, 0.6, 0.45, 0.35, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08] + [0.05] * 20 + [0.02] * 34

FLAT = make_curve([1, 32, 64, 128], [0.010, 0.0102, 0.0105, 0.020])  # GPU-like
STEEP = make_curve([1, 16, 64], [0.020, 0.040, 0.100])  # CPU-like: t(16) = 2 t(1)


def test_flat_curve_takes_a_large_tree_steep_curve_a_small_one():
    gpu = BudgetPolicy(FLAT, overhead_s=0.0, max_nodes=64).choose(PROBS)
    cpu = BudgetPolicy(STEEP, overhead_s=0.0, max_nodes=64).choose(PROBS)
    assert gpu >= 48
    assert 2 <= cpu <= 12
    assert gpu > 4 * cpu


def test_choice_maximizes_the_rate():
    policy = BudgetPolicy(STEEP, overhead_s=0.001, max_nodes=64)
    n = policy.choose(PROBS)
    rates = [policy.expected_rate(PROBS, m) for m in range(65)]
    assert rates[n] == pytest.approx(max(rates))


def test_edge_cases():
    policy = BudgetPolicy(STEEP, max_nodes=16)
    assert policy.choose([]) == 0
    assert policy.choose([0.0, 0.0]) == 0  # worthless nodes are never scored
    assert policy.choose([1.0] * 100) == 16  # capped by max_nodes
    assert BudgetPolicy(STEEP, max_nodes=0).choose([1.0]) == 0
    # A sure node is worth a forward over two tokens instead of one.
    assert policy.choose([1.0]) == 1
    # Drafting cost counts: expensive drafts shrink the tree.
    cheap = policy.choose(PROBS)
    dear = policy.choose(PROBS, draft_cost_per_node=0.005)
    assert dear < cheap
    with pytest.raises(ValueError):
        BudgetPolicy(STEEP, max_nodes=-1)
    with pytest.raises(ValueError):
        BudgetPolicy(STEEP, overhead_s=-1)


def test_fallback_curve_is_cpu_like():
    c = fallback_curve()
    assert c.relative(16) == pytest.approx(2.0, rel=0.1)
    policy = BudgetPolicy(None)
    assert policy.is_fallback
    assert not BudgetPolicy(STEEP).is_fallback
    assert 2 <= policy.choose(PROBS) <= 12


def test_policy_for_uses_a_cached_curve_only(tiny_llama, tmp_path, monkeypatch):
    from specdecode.cost import calibration_path
    from specdecode.files import write_atomic
    from specdecode.machine import device_name

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    assert policy_for(tiny_llama).is_fallback  # nothing cached, nothing measured
    import torch

    flat = LatencyCurve(
        FLAT.ns, FLAT.seconds, "cpu", "float32", tiny_llama.key, device_name=device_name(tiny_llama.device),
        threads=torch.get_num_threads(),
    )  # fmt: skip
    write_atomic(calibration_path(tiny_llama), flat.to_json())
    policy = policy_for(tiny_llama)
    assert not policy.is_fallback
    assert policy.choose(PROBS) >= 48


def test_forward_costs_learn_how_the_cost_grows_with_context():
    from specdecode.budget import ForwardCosts

    curve = make_curve([1, 64], [0.05, 0.05])  # calibrated flat
    costs = ForwardCosts(curve, decay=0.99, refit=4)

    def truth(n, context):  # each scored token costs 2 ms more per 1024 tokens of context
        return 0.05 + 0.002 * (n - 1) * context / 1024

    assert costs.t(9) == pytest.approx(0.05)  # no evidence yet: the curve
    for i in range(200):
        n, context = 1 + (i * 7) % 16, 256 + (i * 37) % 1800
        costs.record(n, context, truth(n, context))
    costs.record(9, 2048, truth(9, 2048))
    costs.record(1, 2048, truth(1, 2048))  # the 202nd record: a refit at context 2048
    for _ in range(2):
        costs.record(9, 2048, truth(9, 2048))
    assert costs.t(9) == pytest.approx(truth(9, 2048), rel=0.05)
    assert costs.t(1) == pytest.approx(truth(1, 2048), rel=0.05)
    # A policy reading these costs takes a smaller tree than the flat curve alone suggests.
    adapted = BudgetPolicy(curve, overhead_s=0.0, costs=costs).choose(PROBS)
    plain = BudgetPolicy(curve, overhead_s=0.0).choose(PROBS)
    assert adapted < plain
    # Nonsense records are ignored.
    before = costs.records
    costs.record(0, 100, 0.1)
    costs.record(4, 100, 0.0)
    assert costs.records == before


def test_the_engine_feeds_forward_timings_to_the_policies():
    from specdecode.engine import build_decoder
    from specdecode.models.testing import tiny_model_for_tests

    lm = tiny_model_for_tests(vocab_size=64, seed=3)
    assert build_decoder("pld", lm).drafter.policy.costs is None  # opt-in
    assert build_decoder("hybrid", lm).drafter.policy.costs is None
    decoder = build_decoder("hybrid", lm, options={"adapt_cost": True})
    r = decoder.generate_ids([3, 5, 7, 3, 5, 7, 3, 5], max_new_tokens=24)
    costs = decoder.drafter.policy.costs
    assert costs is not None and costs.records == r.steps  # one timed forward per step
    assert r.prompt_tokens <= costs.context < r.prompt_tokens + r.new_tokens  # cache before the last forward
