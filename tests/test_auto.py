"""``auto``: a lossless method chosen per request from measured speed, switching across requests."""

import pytest

from specdecode.drafters.auto import AR, Chooser, workload
from specdecode.drafters.base import Drafter
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.sampling import SamplingConfig
from specdecode.tree import DraftTree
from specdecode.verify import greedy_path

pytestmark = pytest.mark.usefixtures("private_cache")

PROMPTS = [[3, 5, 7, 3, 5, 7, 3, 5], [10, 11, 12, 10, 11, 12], [20, 21, 22, 23, 20, 21], [30, 31, 30, 31, 30]]
N = 24


def reference(lm):
    ar = build_decoder("ar", lm)
    return {tuple(p): ar.generate_ids(p, max_new_tokens=N).token_ids for p in PROMPTS}


def test_auto_is_lossless_whatever_it_runs(peaky):
    ref = reference(peaky)
    dec = build_decoder("auto", peaky)
    ran = []
    for _ in range(3):
        for p in PROMPTS:
            r = dec.generate_ids(p, max_new_tokens=N)
            assert r.token_ids == ref[tuple(p)]
            assert r.method == "auto" and r.method_ran in ("hybrid", "suffix", "pld", "ar")
            assert r.method_ran == dec.drafter.last_ran
            ran.append(r.method_ran)
    assert ran[0] == "hybrid"  # the first request, before anything is measured
    assert len(set(ran)) >= 2  # untried methods are tried
    assert build_decoder("pld", peaky).generate_ids(PROMPTS[0], max_new_tokens=4).method_ran == "pld"


class Scripted(Drafter):
    """Drafts from the known greedy answers: the right continuation (``wrong=False``) or, at
    every position, a token that is certainly not the answer's (``wrong=True``)."""

    def __init__(self, ref: dict, vocab: int, *, wrong: bool, depth: int = 4) -> None:
        self.ref, self.vocab, self.wrong, self.depth = ref, vocab, wrong, depth

    def begin(self, prompt_ids, sampling) -> None:
        self.prompt = tuple(prompt_ids)

    def propose(self, tokens, max_depth):
        answer = self.ref[self.prompt]
        at = len(tokens) - len(self.prompt)
        chain = answer[at : at + min(self.depth, max_depth)]
        if self.wrong:
            chain = [(t + 1) % self.vocab for t in chain]
        return DraftTree.chain(chain)


def use(auto, name, drafter):
    """Make ``auto``'s method ``name`` draft with ``drafter``."""
    auto.drafters[name] = drafter
    auto.idle[name] = [drafter]


def test_auto_leaves_a_method_that_does_not_pay(peaky):
    ref = reference(peaky)
    dec = build_decoder("auto", peaky, options={"methods": "pld,suffix", "first": "pld"})
    auto = dec.drafter
    vocab = peaky.model.config.vocab_size
    use(auto, "pld", Scripted(ref, vocab, wrong=True))  # every draft rejected: pure cost
    use(auto, "suffix", Scripted(ref, vocab, wrong=False))  # every draft accepted
    ran = []
    for i in range(6):
        p = PROMPTS[i % len(PROMPTS)]
        r = dec.generate_ids(p, max_new_tokens=N)
        assert r.token_ids == ref[tuple(p)]  # lossless with either
        ran.append(r.method_ran)
    # the first as asked, then the untried one, then the one that pays, and never back yet
    assert ran == ["pld", "suffix", "suffix", "suffix", "suffix", "suffix"]
    history = {m: s for _, m, s in auto.chooser.history}
    assert history["pld"] < 1.0 < 2.0 < history["suffix"]


def test_auto_falls_back_to_ar_when_speculation_does_not_pay(peaky):
    ref = reference(peaky)
    dec = build_decoder("auto", peaky, options={"methods": "pld", "first": "pld"})
    # 12 rejected nodes a step: measured here at about 0.67 of ar's speed, below 1 by more
    # than the exploration bonus (0.2 sqrt(ln(N + 1) / 1) = 0.25 at N = 4)
    use(dec.drafter, "pld", Scripted(ref, peaky.model.config.vocab_size, wrong=True, depth=12))
    ran = [dec.generate_ids(p, max_new_tokens=N).method_ran for p in PROMPTS]
    assert ran == ["pld", "ar", "ar", "ar"]
    work, method, speedup = dec.drafter.chooser.history[0]
    assert (work, method) == ("short", "pld") and speedup < 0.9


def test_plain_decoding_measures_about_one(peaky):
    # ar's requests are measured too (not needed to choose, a check of the estimate): a step
    # that scores one token is its own plain-decoding step, so the ratio is 1 up to the few
    # microseconds of the drafter calls around the forward
    dec = build_decoder("auto", peaky, options={"methods": "pld", "first": "ar"})
    dec.generate_ids(PROMPTS[0], max_new_tokens=N)
    ((work, method, speedup),) = dec.drafter.chooser.history
    assert method == "ar" and 0.8 < speedup <= 1.0 + 1e-9


def test_chooser_bandit():
    c = Chooser(["hybrid", "pld"], explore=0.2, first="hybrid")
    assert c.choose("short") == "hybrid"
    c.record("short", "hybrid", 1.5)
    assert c.choose("short") == "pld"  # never measured: tried once
    c.record("short", "pld", 0.8)
    assert c.choose("short") == "hybrid"
    assert c.choose("long") == "hybrid"  # a new workload borrows the others' means
    c.record("long", "hybrid", 0.6)
    c.record("long", "pld", 0.7)
    assert c.choose("long") == AR  # neither pays there
    assert c.choose("short") == "hybrid"  # the short prompts' record is their own
    for _ in range(30):  # plain decoding for a long while: the bound of the others grows
        c.record("long", AR, 1.0)
    assert c.choose("long") != AR
    assert workload([1] * 10) == "short" and workload([1] * 300) == "long"


def test_auto_options_are_checked(tiny_llama):
    for options, words in (
        ({"methods": "auto"}, "cannot be a candidate"),
        ({"methods": "ar,pld"}, "cannot be a candidate"),
        ({"methods": "draft-model"}, "cannot be a candidate"),
        ({"methods": "nope"}, "unknown method 'nope'"),
        ({"methods": "pld,pld"}, "named twice"),
        ({"methods": " , "}, "methods is empty"),
        ({"methods": "pld", "first": "hybrid"}, "first='hybrid' is not among"),
        ({"explore": -1}, "explore"),
    ):
        with pytest.raises(SpecDecodeError, match=words):
            build_decoder("auto", tiny_llama, options=options)


def test_the_benchmark_says_what_auto_ran(peaky, tmp_path):
    import json

    from specdecode.bench.datasets import Prompt
    from specdecode.bench.runner import BenchConfig, run_bench

    prompts = [Prompt(str(i), "c", " ".join(f"t{t}" for t in p)) for i, p in enumerate(PROMPTS)]
    cfg = BenchConfig(methods=["ar", "auto"], max_new_tokens=8, warmup=0, out=tmp_path / "r.json",
                      plots=False, progress=False, raw=True, calibration="off")  # fmt: skip
    res = run_bench(cfg, target=peaky, prompts=prompts, log=lambda m: None)
    ran = [r.method_ran for r in res.records if r.method == "auto"]
    assert all(m in ("hybrid", "suffix", "pld", "ar") for m in ran) and ran[0] == "hybrid"
    assert all(r.method_ran is None for r in res.records if r.method == "ar")
    data = json.loads((tmp_path / "r.json").read_text())
    assert sum(data["summary"]["auto"]["ran"].values()) == 4 and data["summary"]["ar"]["ran"] is None
    assert data["summary"]["auto"]["identical_to_ar"] == 4
    assert [p["results"]["auto"]["method_ran"] for p in data["prompts"]] == ran
    assert "| auto (" in (tmp_path / "r.md").read_text()


def test_a_candidate_that_reads_the_target_gets_the_reader(peaky):
    # swift drafts with the target's own layers: auto asks the engine for what it reads and
    # hands the reader on when swift is chosen
    ref = reference(peaky)
    dec = build_decoder("auto", peaky, options={"methods": "swift,pld", "first": "swift"})
    assert dec.drafter.reads_target == frozenset({"kv"})
    ran = []
    for p in PROMPTS:
        r = dec.generate_ids(p, max_new_tokens=N)
        assert r.token_ids == ref[tuple(p)]
        ran.append(r.method_ran)
    assert ran[:2] == ["swift", "pld"]
    assert dec.drafter.drafters["swift"].reader is not None  # the reader of its last request


def test_greedy_path_over_a_known_answer():
    # root -> 5 -> 6 -> 7, and a branch root -> 9; node 4 (8) hangs below node 1 (6)
    tree = DraftTree([5, 6, 9, 7, 8], [-1, 0, -1, 1, 1])
    assert greedy_path(tree, [5, 6, 7, 1]) == [0, 1, 3]
    assert greedy_path(tree, [5, 6, 8]) == [0, 1, 4]
    assert greedy_path(tree, [9, 6]) == [2]
    assert greedy_path(tree, [4]) == []
    assert greedy_path(tree, [5, 6]) == [0, 1]  # the answer ends inside the tree
    assert greedy_path(DraftTree.empty(), [5]) == []


class Replayable(Scripted):
    replayable = True


def test_replay_ranks_methods_on_the_same_request(peaky):
    # the first request runs plain decoding; both candidates are replayed over its answer, so
    # the one whose drafts are right is chosen next, and the wrong one never has to run
    ref = reference(peaky)
    dec = build_decoder("auto", peaky, options={"methods": "pld,suffix", "first": "ar"})
    auto = dec.drafter
    vocab = peaky.model.config.vocab_size
    use(auto, "pld", Replayable(ref, vocab, wrong=True))
    use(auto, "suffix", Replayable(ref, vocab, wrong=False))
    ran = []
    for p in PROMPTS:
        r = dec.generate_ids(p, max_new_tokens=N)
        assert r.token_ids == ref[tuple(p)]
        ran.append(r.method_ran)
    assert ran == ["ar", "suffix", "suffix", "suffix"]
    replays = auto.chooser.replays["short"]
    assert replays["pld"].n == replays["suffix"].n == len(PROMPTS)
    assert replays["pld"].mean < 1.0 < replays["suffix"].mean


def test_no_replay_under_sampling(peaky):
    dec = build_decoder("auto", peaky, options={"methods": "pld,suffix", "first": "ar"})
    dec.generate_ids(PROMPTS[0], max_new_tokens=N, sampling=SamplingConfig(temperature=1.0, seed=0))
    assert dec.drafter.chooser.replays == {}
    dec.generate_ids(PROMPTS[0], max_new_tokens=N)
    assert set(dec.drafter.chooser.replays["short"]) == {"pld", "suffix"}


def test_replay_runs_before_the_answer_joins_the_memory(peaky, monkeypatch):
    # suffix remembers finished answers; a replay after that would find the answer itself
    import specdecode.drafters.auto as auto_mod

    seen = []
    real = auto_mod.replay_speedup

    def spy(drafter, *args, **kwargs):
        if hasattr(drafter, "memory"):
            seen.append(len(drafter.memory.texts))
        return real(drafter, *args, **kwargs)

    monkeypatch.setattr(auto_mod, "replay_speedup", spy)
    dec = build_decoder("auto", peaky, options={"methods": "suffix", "first": "suffix"})
    dec.generate_ids(PROMPTS[0], max_new_tokens=N)
    assert seen == [0] and len(dec.drafter.drafters["suffix"].memory.texts) == 1


def test_replays_teach_the_methods_that_did_not_run(peaky, monkeypatch):
    import specdecode.drafters.auto as auto_mod

    learned = {}
    real = auto_mod.replay_speedup

    def spy(drafter, *args, learn=False):
        learned[type(drafter).__name__] = learn
        return real(drafter, *args, learn=learn)

    monkeypatch.setattr(auto_mod, "replay_speedup", spy)
    dec = build_decoder("auto", peaky, options={"methods": "pld,suffix", "first": "suffix"})
    pld = dec.drafter.drafters["pld"]
    before = {n: list(r.rates) for n, r in pld.rates.items()}
    dec.generate_ids(PROMPTS[0], max_new_tokens=N)  # repeats itself: pld's drafts are judged
    # suffix ran and learned from its real steps; pld, replayed, learned from the replay
    assert learned == {"SuffixDrafter": False, "PromptLookup": True}
    assert {n: list(r.rates) for n, r in pld.rates.items()} != before
