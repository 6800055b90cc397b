"""``suffix`` (SuffixDecoding over suffix automata): lossless greedy and sampling, trees, the
memory of earlier requests (cap, files), and the automaton's linear-work guarantees."""

import random

import pytest
import torch

from drafting import PROMPTS, check_greedy_equals_ar, spy
from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.drafters._suffix_automaton import (
    COUNT_CAP,
    Matcher,
    SharedMemory,
    SuffixAutomaton,
)
from specdecode.drafters.suffix import EARLIER, N_DEPTH, N_FREQ, N_MATCH, OWN
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("private_cache")


def source_of(b: int) -> int:
    return b // (N_MATCH * N_DEPTH * N_FREQ)


@pytest.mark.parametrize(
    "options",
    [{}, {"budget": 8}, {"budget": 3, "max_spec_factor": 1.0}, {"max_memory_tokens": 0, "max_depth": 4}],
)
def test_greedy_equals_ar(peaky, options):
    check_greedy_equals_ar(peaky, "suffix", options, min_accepted=1.05)


def test_a_repeated_request_drafts_from_the_earlier_one(peaky):
    dec = build_decoder("suffix", peaky)
    trees = spy(dec)
    first = dec.generate_ids(PROMPTS[1], max_new_tokens=48)
    seen = len(trees)
    tags: list = []
    propose = dec.drafter.candidates

    def recording(tokens, max_depth):
        c = propose(tokens, max_depth)
        tags.extend(c.tags)
        return c

    dec.drafter.candidates = recording
    second = dec.generate_ids(PROMPTS[1], max_new_tokens=48)
    assert second.token_ids == first.token_ids
    assert second.mean_accepted > first.mean_accepted + 2.0
    assert len(trees) - seen < seen / 2  # far fewer steps
    assert any(source_of(b) == EARLIER for bs in tags for b in bs)
    # Without the memory, the repeat is drafted like the first time.
    alone = build_decoder("suffix", peaky, options={"max_memory_tokens": 0})
    alone.generate_ids(PROMPTS[1], max_new_tokens=48)
    assert alone.generate_ids(PROMPTS[1], max_new_tokens=48).mean_accepted < first.mean_accepted + 0.5


def test_a_live_request_joins_the_memory_when_it_finishes(peaky):
    dec = build_decoder("suffix", peaky, options={"budget": 4})
    memory = dec.drafter.memory
    stream = dec.stream(PROMPTS[0], max_new_tokens=20)
    next(stream)
    other = dec.generate_ids(PROMPTS[1], max_new_tokens=20).token_ids
    assert list(memory.texts) == [PROMPTS[1] + other]  # not the live stream's partial text
    rest = [t for piece in stream for t in piece.token_ids]
    assert len(memory.texts) == 2 and memory.texts[1][: len(PROMPTS[0])] == PROMPTS[0]
    assert len(memory.texts[1]) == len(PROMPTS[0]) + 20 and rest


def test_candidates_merge_both_sources_into_one_ranked_tree(peaky):
    drafter = build_decoder("suffix", peaky, options={"budget": 64, "max_spec_factor": 1.0}).drafter
    drafter.memory.add([1, 2, 3, 4, 5] + [1, 2, 3, 6, 7] * 3)
    context = [9, 1, 2, 3, 4, 8, 1, 2, 3]
    drafter.begin(context, SamplingConfig())
    c = drafter.candidates(context, 24)
    roots = {c.tokens[i]: i for i, p in enumerate(c.parents) if p < 0}
    assert set(roots) == {4, 6}  # this request: 4; earlier requests: 6 (3 times), 4 (once)
    assert {source_of(b) for b in c.tags[roots[4]]} == {OWN, EARLIER}  # one node, both owners
    assert {source_of(b) for b in c.tags[roots[6]]} == {EARLIER}
    assert all(p < i for i, p in enumerate(c.parents))
    assert all(a >= b for a, b in zip(c.probs, c.probs[1:], strict=False))  # best first
    depth = [0] * len(c.tokens)
    for i, p in enumerate(c.parents):
        depth[i] = 1 if p < 0 else depth[p] + 1
    assert max(depth) == 3  # no deeper than max_spec_factor times the match (3 tokens)
    assert [c.tokens[i] for i, p in enumerate(c.parents) if p == roots[6]] == [7]
    # Ranked by how often each continuation followed the match.
    drafter.begin([9, 1, 2, 3], SamplingConfig())
    c = drafter.candidates([9, 1, 2, 3], 24)
    assert [c.tokens[i] for i, p in enumerate(c.parents) if p < 0] == [6, 4]


def test_rates_learn_per_source(peaky):
    dec = build_decoder("suffix", peaky, options={"budget": 6})
    before = list(dec.drafter.rates.offered)
    for prompt in PROMPTS + PROMPTS:
        dec.generate_ids(prompt, max_new_tokens=32)
    offered = dec.drafter.rates.offered
    learned = {source_of(b) for b, (o, o0) in enumerate(zip(offered, before, strict=True)) if o > o0}
    assert learned == {OWN, EARLIER}


@pytest.mark.parametrize("sources", [None, "suffix,pld"])
def test_sampling_is_lossless(sources):
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    prompt = [3, 5, 3, 5, 3]
    cfg = SamplingConfig(temperature=1.0)
    if sources is None:
        dec = build_decoder("suffix", lm, options={"budget": 6})
    else:
        dec = build_decoder("hybrid", lm, options={"sources": sources, "budget": 6})
    trees = spy(dec)
    counts = sample_joint(dec, prompt, cfg, 1500)
    assert sum(len(t) for t in trees) > 1500  # drafts were scored
    assert any(not t.is_chain for t in trees)
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


# ---- the automaton: correct, and linear work -----------------------------------------------


def occurrences(text, s):
    return sum(text[i : i + len(s)] == s for i in range(len(text) - len(s) + 1))


def read(sam, s):
    state = 0
    for t in s:
        state = sam.next[state].get(t)
        if state is None:
            return None
    return state


def test_automaton_counts_and_continuations_match_brute_force():
    rng = random.Random(0)
    text = [rng.randrange(4) for _ in range(300)] + [1, 2, 3] * 10
    sam = SuffixAutomaton(text)
    for _ in range(300):
        i = rng.randrange(len(text))
        s = text[i : i + rng.randrange(1, 8)]
        state = read(sam, s)
        assert state is not None
        assert sam.count[state] == min(occurrences(text, s), COUNT_CAP)
        follows = {text[j + len(s)] for j in range(len(text) - len(s)) if text[j : j + len(s)] == s}
        assert {t for _, t, _ in sam.children(state)} == follows
    assert read(sam, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) is None
    state, length = sam.repeated_suffix()  # "1 2 3" repeated: the longest earlier suffix is 27 long
    assert length == 27 and sam.count[state] == 2


@pytest.mark.parametrize("kind", ["random", "binary", "text-like", "periodic"])
def test_automaton_size_and_work_are_linear(kind):
    rng = random.Random(1)
    n = 4000
    if kind == "random":
        text = [rng.randrange(50) for _ in range(n)]
    elif kind == "binary":
        text = [rng.randrange(2) for _ in range(n)]
    elif kind == "text-like":  # phrases reused with variations, as in answers
        phrases = [[rng.randrange(200) for _ in range(rng.randrange(2, 12))] for _ in range(60)]
        text = []
        while len(text) < n:
            text += rng.choice(phrases) + [rng.randrange(200)]
        text = text[:n]
    else:
        text = [7, 8, 9] * (n // 3) + [7]
    sam = SuffixAutomaton(text)
    states = len(sam.length)
    assert states <= 2 * n and sam.transitions <= 3 * n
    assert sam.steps <= 3 * n  # construction: amortized O(1) per token
    # The count walk: at most COUNT_CAP per token (reached by a periodic text), a few otherwise.
    assert sam.count_steps <= COUNT_CAP * n
    if kind != "periodic":
        assert sam.count_steps <= 10 * n
    # Matching a context of m tokens follows at most m suffix links: O(1) amortized per token.
    memory = SharedMemory(max_tokens=10 * n)
    memory.add(text)
    matcher = Matcher(memory)
    context = (
        [rng.randrange(50) for _ in range(500)] + text[1000:1500] + [rng.randrange(50) for _ in range(500)]
    )
    for end in range(1, len(context) + 1, 7):
        matcher.update(context[:end])
    matcher.update(context)
    assert matcher.tokens_stepped == len(context)
    assert matcher.follows <= matcher.tokens_stepped


def test_matcher_finds_the_longest_suffix_in_the_memory():
    rng = random.Random(2)
    texts = [[rng.randrange(6) for _ in range(80)] for _ in range(3)]
    memory = SharedMemory(max_tokens=1000)
    for t in texts:
        memory.add(t)
    matcher = Matcher(memory)
    context = []
    for _ in range(200):
        context.append(rng.randrange(6))
        matcher.update(context)
        found = [
            k
            for k in range(len(context) + 1)
            if any(occurrences(t, context[-k:] if k else []) for t in texts)
        ]
        want = max(found)
        assert matcher.length == want  # never across two texts: each ends in its own separator
    # The memory changes: the matcher re-matches from the context.
    memory.add(context[-30:])
    matcher.update(context)
    assert matcher.length == 30


def test_memory_cap_evicts_the_oldest():
    memory = SharedMemory(max_tokens=100)
    texts = [[i] * 5 + list(range(10 * i, 10 * i + 35)) for i in range(1, 5)]  # 40 tokens each
    for t in texts:
        memory.add(t)
    assert memory.tokens <= 100
    assert list(memory.texts) == texts[-2:]  # the oldest went first (down to 3/4 of the cap)
    matcher = Matcher(memory)
    matcher.update(texts[0][:20])
    assert matcher.length < 5  # forgotten
    matcher = Matcher(memory)
    matcher.update(texts[-1][:20])
    assert matcher.length == 20
    memory.add(list(range(1000, 1300)))  # longer than the cap: its end only
    assert list(memory.texts) == [list(range(1200, 1300))]


def test_memory_cap_in_the_drafter(peaky):
    dec = build_decoder("suffix", peaky, options={"max_memory_tokens": 80, "budget": 4})
    outs = [dec.generate_ids(p, max_new_tokens=30).token_ids for p in PROMPTS]
    memory = dec.drafter.memory
    assert memory.tokens <= 80
    assert memory.texts[-1] == PROMPTS[-1] + outs[-1]
    assert PROMPTS[0] + outs[0] not in memory.texts


# ---- the memory on disk --------------------------------------------------------------------


def test_save_load_round_trip(peaky, tmp_path):
    path = tmp_path / "memory.safetensors"
    dec = build_decoder("suffix", peaky, options={"memory_file": str(path)})
    first = [dec.generate_ids(p, max_new_tokens=32) for p in PROMPTS[:2]]
    assert path.is_file()  # saved when each request finished
    assert [p.name for p in tmp_path.iterdir()] == ["memory.safetensors"]  # no temporaries left
    again = build_decoder("suffix", peaky, options={"memory_file": str(path)})
    assert list(again.drafter.memory.texts) == list(dec.drafter.memory.texts)
    got_accepted, got_offered = again.drafter.rates.state()
    want_accepted, want_offered = dec.drafter.rates.state()
    assert got_accepted == pytest.approx(want_accepted)
    assert got_offered == pytest.approx(want_offered)
    # The loaded memory drafts: a repeat of a saved request is mostly accepted.
    repeat = again.generate_ids(PROMPTS[1], max_new_tokens=32)
    assert repeat.token_ids == first[1].token_ids
    assert repeat.mean_accepted > first[1].mean_accepted + 2.0
    # A smaller cap keeps the newest texts.
    small = build_decoder("suffix", peaky, options={"memory_file": str(path), "max_memory_tokens": 50})
    assert list(small.drafter.memory.texts)[-1] == list(dec.drafter.memory.texts)[-1][-50:]


def test_persist_saves_per_model_in_the_cache(peaky, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    dec = build_decoder("suffix", peaky, options={"budget": 4, "persist": True})
    dec.generate_ids(PROMPTS[0], max_new_tokens=16)
    path = tmp_path / "suffix" / f"{peaky.key}.safetensors"
    assert path.is_file()
    again = build_decoder("suffix", peaky, options={"persist": True})
    assert list(again.drafter.memory.texts) == list(dec.drafter.memory.texts)


def rewrite(src, dst, **changes):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    meta.update(changes.pop("meta", {}))
    tensors.update(changes)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_bad_files(peaky, tmp_path, monkeypatch):
    def refused(path, match):
        with pytest.raises(SpecDecodeError, match=match):
            build_decoder("suffix", peaky, options={"memory_file": str(path)})

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    refused(garbage, "not a usable suffix memory file")
    recycling = build_decoder("recycling", peaky).drafter.save(tmp_path / "matrix.safetensors")
    refused(recycling, "not a suffix memory")

    good = build_decoder("suffix", peaky, options={"budget": 4})
    good.generate_ids(PROMPTS[0], max_new_tokens=8)
    ok = good.drafter.save(tmp_path / "ok.safetensors")
    tokens = good.drafter.memory.texts[0]
    n = len(tokens)
    refused(rewrite(ok, tmp_path / "len.safetensors", lengths=torch.tensor([n + 1])), "add up to")
    refused(rewrite(ok, tmp_path / "neg.safetensors", lengths=torch.tensor([n + 1, -1])), "add up to")
    bad = torch.tensor(tokens, dtype=torch.int32)
    bad[0] = 64
    refused(rewrite(ok, tmp_path / "range.safetensors", tokens=bad), "out of range")
    refused(rewrite(ok, tmp_path / "dtype.safetensors", tokens=bad.float()), "int32")
    refused(rewrite(ok, tmp_path / "version.safetensors", meta={"version": "9"}), "format version")

    # Another model's memory: refused when named, ignored with a warning when cached.
    other = tiny_model_for_tests(vocab_size=64, seed=4, initializer_range=0.3)
    theirs = build_decoder("suffix", other, options={"budget": 4})
    theirs.generate_ids(PROMPTS[0], max_new_tokens=8)
    foreign = theirs.drafter.save(tmp_path / "other.safetensors")
    refused(foreign, "saved for model")
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    cached = tmp_path / "suffix" / f"{peaky.key}.safetensors"
    cached.parent.mkdir()
    cached.write_bytes(foreign.read_bytes())
    with pytest.warns(UserWarning, match="saved for model"):
        fresh = build_decoder("suffix", peaky, options={"persist": True})
    assert fresh.drafter.memory.tokens == 0

    # A missing file named explicitly is fine: it is created on save.
    new = tmp_path / "sub" / "new.safetensors"
    dec = build_decoder("suffix", peaky, options={"memory_file": str(new)})
    assert dec.drafter.save() == new and new.is_file()
    assert build_decoder("suffix", peaky, options={"memory_file": str(new)}).drafter.memory.tokens == 0


@pytest.mark.real_model
def test_real_model_greedy_equals_ar(default_model):
    ar = build_decoder("ar", default_model)
    dec = build_decoder("suffix", default_model, options={"budget": 8})
    ids = default_model.encode_prompt("Summarize: The cat sat on the mat. The cat was happy on the mat.")
    want = ar.generate_ids(ids, max_new_tokens=64).token_ids
    assert dec.generate_ids(ids, max_new_tokens=64).token_ids == want
    again = dec.generate_ids(ids, max_new_tokens=64)  # drafted from the memory of the first
    assert again.token_ids == want and again.mean_accepted > 3.0
