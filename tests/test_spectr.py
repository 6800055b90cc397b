"""SpecTr's K-SEQ on hand-built p and q: rho as the paper defines it, and the output distribution
the target's for k i.i.d. drafts, as separate chains or as a trie with counts; a multi-draft rule
without K-SEQ's correction fails the same test."""

from collections import Counter

import pytest
import torch

from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.drafters.base import Drafter
from specdecode.engine import Decoder, build_decoder
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.verify import MultiDraft, Verdict, kseq_residual, kseq_rho, verify, verify_kseq

V, K = 6, 3
N = 3000  # draws per test
torch.manual_seed(5)
P0 = torch.distributions.Dirichlet(torch.ones(V)).sample()
P1 = torch.distributions.Dirichlet(torch.ones(V) * 0.7).sample((V,))  # p(second | first)
Q0 = torch.distributions.Dirichlet(torch.ones(V)).sample()
Q1 = torch.distributions.Dirichlet(torch.ones(V)).sample((V,))


def exact():
    return {(a, b): float(P0[a] * P1[a, b]) for a in range(V) for b in range(V)}


def drafts(gen, n: int) -> list[list[tuple[int, int]]]:
    """``n`` sets of K sequences of two tokens, each sequence drawn from q independently."""
    first = torch.multinomial(Q0, n * K, replacement=True, generator=gen)  # [n * K]
    second = torch.multinomial(Q1[first], 1, generator=gen)[:, 0]  # [n * K]
    pairs = list(zip(first.tolist(), second.tolist(), strict=True))
    return [pairs[i * K : (i + 1) * K] for i in range(n)]


def as_chains(seqs) -> MultiDraft:
    """One chain per draft, duplicates kept: the verifier merges equal prefixes itself."""
    tokens, parents, rows = [], [], []
    for a, b in seqs:
        tokens += [a, b]
        parents += [-1, len(tokens) - 2]
        rows += [Q0, Q1[a]]
    return MultiDraft(tokens, parents, torch.stack(rows))


def as_trie(seqs) -> MultiDraft:
    """Equal prefixes merged, with the number of draws through each node."""
    index: dict[tuple, int] = {}
    tokens, parents, rows, counts = [], [], [], []
    for seq in seqs:
        parent = -1
        for d in range(len(seq)):
            key = seq[: d + 1]
            if key not in index:
                index[key] = len(tokens)
                tokens.append(seq[d])
                parents.append(parent)
                rows.append(Q0 if d == 0 else Q1[seq[0]])
                counts.append(0)
            counts[index[key]] += 1
            parent = index[key]
    return MultiDraft(tokens, parents, torch.stack(rows), counts=counts)


def target_rows(tree) -> torch.Tensor:
    """p after the root and after each node (only depth <= 1 matters)."""
    rows = [P0] + [
        P1[t] if par == -1 else torch.full((V,), 1.0 / V)
        for t, par in zip(tree.tokens, tree.parents, strict=True)
    ]
    return torch.stack(rows)


def run(shape, verifier, n: int = N) -> tuple[Counter, int]:
    gen = torch.Generator().manual_seed(1)
    firsts, seconds, accepted_first = [], [], 0
    for seqs in drafts(gen, n):
        tree = shape(seqs)
        v: Verdict = verifier(tree, target_rows(tree), gen)
        firsts.append(v.tokens[0])
        seconds.append(v.tokens[1] if len(v.tokens) > 1 else None)
        accepted_first += v.accepted > 0
    # a step that committed one token is followed by plain sampling, which is exact
    plain = torch.multinomial(P1[torch.tensor(firsts)], 1, generator=gen)[:, 0].tolist()
    counts = Counter(
        (a, plain[i] if b is None else b) for i, (a, b) in enumerate(zip(firsts, seconds, strict=True))
    )
    return counts, accepted_first


def kseq(tree, p_all, gen):
    return verify_kseq(tree, p_all, gen, tree.counts)


@pytest.mark.parametrize("shape", [as_chains, as_trie], ids=["chains", "trie"])
def test_kseq_reproduces_the_target_distribution(shape):
    counts, accepted = run(shape, kseq)
    assert chi_square_pvalue(counts, exact()) > 1e-3
    # the first level accepts with the paper's 1 - (1 - beta)^k, above one draft's sum min(p, q)
    rho, beta = kseq_rho(P0, Q0, K)
    want = 1 - (1 - beta) ** K
    assert abs(accepted / N - want) < 4 * (want * (1 - want) / N) ** 0.5
    assert want > float(torch.minimum(P0, Q0).sum())


def without_the_correction(tree, p_all, gen):
    """k drafts each accepted with min(1, p/q), then the residual norm(max(0, p - q)): what one
    might write by analogy with a single draft. It gives too many draft tokens."""
    node, path = -1, []
    while True:
        p, kids = p_all[node + 1], tree.children(node)
        if not kids:
            return Verdict(
                path, [tree.tokens[i] for i in path] + [int(torch.multinomial(p, 1, generator=gen))]
            )
        q = tree.draft_probs[kids[0]]
        for c in kids:
            x = tree.tokens[c]
            if float(torch.rand((), generator=gen)) * float(q[x]) < float(p[x]):
                path.append(c)
                node = c
                break
        else:
            residual = (p - q).clamp(min=0)
            return Verdict(
                path, [tree.tokens[i] for i in path] + [int(torch.multinomial(residual, 1, generator=gen))]
            )


def test_the_test_catches_a_multi_draft_rule_without_kseqs_correction():
    counts, _ = run(as_chains, without_the_correction, 1000)
    assert chi_square_pvalue(counts, exact()) < 1e-6


def test_rho_is_the_smallest_that_keeps_the_residual_a_distribution():
    gen = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 5, 8):
        for _ in range(20):
            p = torch.distributions.Dirichlet(torch.ones(50) * 0.3).sample()
            q = torch.distributions.Dirichlet(torch.ones(50) * 0.3).sample()
            p[torch.randint(0, 50, (5,), generator=gen)] = 0  # tokens the target never gives
            p /= p.sum()
            rho, beta = kseq_rho(p, q, k)
            assert 1 <= rho <= k
            accepted = torch.minimum(q, p / rho) * (1 - (1 - beta) ** k) / beta  # P(accept, x)
            assert float((p.double() - accepted.double()).min()) > -1e-6  # the residual is >= 0
            if k == 1:
                assert rho == 1
            elif rho > 1 + 1e-6:  # any smaller rho breaks it: 1 - (1 - beta)^k > rho beta
                b = float(torch.minimum(q, p / (rho - 1e-4)).sum())
                assert 1 - (1 - b) ** k > (rho - 1e-4) * b
            res = kseq_residual(p, q, k, rho, beta)
            assert float(res.sum()) == pytest.approx(1.0) and float(res.min()) >= 0


def test_verify_sends_a_multidraft_to_kseq_and_walks_duplicates_when_greedy():
    # two chains share the first token 1; the target's choices follow the second chain
    tree = MultiDraft([1, 2, 1, 3], [-1, 0, -1, 2], torch.full((4, V), 1.0 / V))
    logits = torch.full((5, V), -5.0)
    for row, best in enumerate([1, 3, 0, 3, 4]):  # after root, node 0, node 1, node 2, node 3
        logits[row, best] = 5.0
    v = verify(tree, logits, SamplingConfig())
    assert v.path == [2, 3] and v.tokens == [1, 3, 4]
    with pytest.raises(ValueError, match="counts"):
        MultiDraft([1], [-1], counts=[0])
    sampled = verify(tree, logits, SamplingConfig(temperature=1.0), torch.Generator().manual_seed(0))
    assert sampled.tokens[: len(sampled.path)] == [tree.tokens[i] for i in sampled.path]


# ---- through the engine: a drafter that proposes a MultiDraft needs nothing else ---------------
class IIDChains(Drafter):
    """Test-only: K chains of ``depth`` tokens drawn independently from a draft model's q (its
    full forward per token, no cache), as SpecTr drafts; duplicates kept as separate chains."""

    def __init__(self, draft, depth: int = 2) -> None:
        self.draft, self.depth = draft, depth
        self.sampling, self.gen = SamplingConfig(), None

    def begin(self, prompt_ids, sampling) -> None:
        self.sampling = sampling
        self.gen = torch.Generator().manual_seed((sampling.seed or 0) + 1)

    def propose(self, tokens, max_depth):
        chains: list[list[int]] = [[] for _ in range(K)]
        rows: list[list[torch.Tensor]] = [[] for _ in range(K)]
        for _ in range(min(self.depth, max_depth)):  # one batched draft forward per level
            logits = self.draft.model(torch.tensor([tokens + c for c in chains])).logits[:, -1]
            greedy = self.sampling.greedy
            q = logits.softmax(-1) if greedy else target_probs(logits, self.sampling)  # [K, vocab]
            x = q.argmax(-1) if greedy else torch.multinomial(q, 1, generator=self.gen)[:, 0]
            for c, r, t, row in zip(chains, rows, x.tolist(), q, strict=True):
                c.append(t)
                r.append(row)
        tokens_, parents, draft_rows = [], [], []
        for c, r in zip(chains, rows, strict=True):
            for d, (t, row) in enumerate(zip(c, r, strict=True)):
                parents.append(-1 if d == 0 else len(tokens_) - 1)
                tokens_.append(t)
                draft_rows.append(row)
        return MultiDraft(tokens_, parents, torch.stack(draft_rows))


@pytest.fixture(scope="module")
def pair():
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    draft = tiny_model_for_tests(vocab_size=8, seed=2, eos_token_id=None, initializer_range=0.3)
    return lm, draft


def test_a_multidraft_drafter_through_the_engine_is_lossless(pair):
    lm, draft = pair
    prompt, cfg = [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0)
    dec = Decoder("iid-chains", lm, IIDChains(draft))
    want = build_decoder("ar", lm).generate_ids(prompt, max_new_tokens=16).token_ids
    assert dec.generate_ids(prompt, max_new_tokens=16).token_ids == want  # greedy: ar's text
    counts = sample_joint(dec, prompt, cfg, 500)
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


# ---- draft-model's drafts=k: SpecTr (K-SEQ over a trie of the draws) and RRS over k chains -------
def sample_two_levels(dec, prompt, cfg, n: int) -> Counter:
    """New tokens 2 and 3 of ``n`` generations (seeds 0 .. n - 1, residual coupling) of four new
    tokens: the first step drafts two levels below the first token, so both are verified ones."""
    counts: Counter = Counter()
    for seed in range(n):
        c = SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p, seed=seed, coupling="residual")
        ids = dec.generate_ids(prompt, max_new_tokens=4, sampling=c).token_ids
        counts[(ids[1], ids[2])] += 1
    return counts


def draft_model(pair, verifier: str = "spectr", k: int = K):
    lm, draft = pair
    options = {"drafts": k, "verifier": verifier, "threshold": 0.0, "max_draft": 2}
    return build_decoder("draft-model", lm, draft=draft, options=options)


@pytest.fixture(scope="module")
def exact_pair(pair):
    lm, _ = pair
    return exact_joint(lm, [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0))


@pytest.mark.parametrize("verifier", ["spectr", "rrs"])
def test_draft_model_with_k_drafts_is_lossless(pair, exact_pair, verifier, monkeypatch):
    import specdecode.verify as verify_module

    calls = Counter()
    real_kseq, real_rrs = verify_module.verify_kseq, verify_module.verify_sampling

    def kseq_spy(*args, **kwargs):
        calls["kseq"] += 1
        return real_kseq(*args, **kwargs)

    def rrs_spy(*args, **kwargs):
        calls["rrs"] += 1
        return real_rrs(*args, **kwargs)

    monkeypatch.setattr(verify_module, "verify_kseq", kseq_spy)
    monkeypatch.setattr(verify_module, "verify_sampling", rrs_spy)
    dec = draft_model(pair, verifier)
    prompt, cfg = [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0)
    counts = sample_two_levels(dec, prompt, cfg, 600)
    assert chi_square_pvalue(counts, exact_pair) > 1e-3
    # the multi-draft verifier ran at every first step (an empty tree goes to verify_sampling)
    assert calls["kseq" if verifier == "spectr" else "rrs"] >= 600
    if verifier == "rrs":
        assert calls["kseq"] == 0


def test_the_engine_test_catches_a_wrong_acceptance_rule(pair, exact_pair, monkeypatch):
    """K-SEQ's acceptance without its rho (each draw accepted with min(1, p/q), as for one draft)
    and the single-draft residual: the same engine test rejects it."""
    import specdecode.verify as verify_module

    monkeypatch.setattr(
        verify_module,
        "verify_kseq",
        lambda tree, p_all, gen, counts=None: without_the_correction(tree, p_all, gen),
    )
    dec = draft_model(pair, k=4)
    prompt, cfg = [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0)
    counts = sample_two_levels(dec, prompt, cfg, 600)
    assert chi_square_pvalue(counts, exact_pair) < 1e-4


def test_k_drafts_form_a_trie_of_iid_draws_or_k_chains(pair):
    lm, draft = pair
    prompt, cfg = [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0, seed=3, coupling="residual")
    k = 5
    for verifier in ("spectr", "rrs"):
        drafter = draft_model(pair, verifier, k).drafter
        drafter.begin(prompt, cfg)
        with torch.inference_mode():
            tree = drafter.propose(prompt + [1], 2)
        depths = tree.depths()
        assert max(depths) == 2
        if verifier == "spectr":
            assert isinstance(tree, MultiDraft)
            assert sum(tree.counts[c] for c in tree.children(-1)) == k
            for node in range(len(tree)):
                kids = tree.children(node)
                assert not kids or sum(tree.counts[c] for c in kids) == tree.counts[node]
                siblings = [tree.tokens[c] for c in tree.children(tree.parents[node])]
                assert len(siblings) == len(set(siblings))  # equal draws merged
        else:
            assert not isinstance(tree, MultiDraft)
            assert len(tree.children(-1)) == k and len(tree) == 2 * k  # k chains of two
        # each node carries the q it was drawn from: the draft's distribution after its parent
        for node in range(len(tree)):
            parent = tree.parents[node]
            ctx = prompt + [1] + ([tree.tokens[parent]] if parent >= 0 else [])
            with torch.inference_mode():
                q = target_probs(draft.model(torch.tensor([ctx])).logits[0, -1], cfg)
            assert torch.allclose(tree.draft_probs[node], q, atol=1e-5)


def test_k_drafts_keep_greedy_identical_and_check_the_option(pair):
    lm, draft = pair
    prompt = [3, 5, 3, 5, 3]
    want = build_decoder("ar", lm).generate_ids(prompt, max_new_tokens=16).token_ids
    for verifier in ("spectr", "rrs"):
        assert draft_model(pair, verifier).generate_ids(prompt, max_new_tokens=16).token_ids == want
    from specdecode.errors import SpecDecodeError

    with pytest.raises(SpecDecodeError, match="verifier.*one of spectr, rrs"):
        build_decoder("draft-model", lm, draft=draft, options={"verifier": "kseq"})
    with pytest.raises(SpecDecodeError, match="drafts"):
        build_decoder("draft-model", lm, draft=draft, options={"drafts": "0"})
