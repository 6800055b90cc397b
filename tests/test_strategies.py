"""The lossy strategies (specdecode.strategies): diverse beam search against hand-computed cases
and transformers' beam search, superposed decoding against a from-scratch recomputation,
exact-extract against brute force over every span, entropy-adaptive decoding against per-token
recomputation; and their CLI, API and bench access."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from specdecode.cli import main
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.strategies import build_strategy, get_strategy, list_strategies
from specdecode.strategies._lm import RowsLM, TableLM
from specdecode.strategies.diverse_beam import diverse_beam_search
from specdecode.strategies.entropy_adaptive import entropy
from specdecode.strategies.extract import extract_span
from specdecode.strategies.superposed import PromptNgrams, superposed_decode

pytestmark = pytest.mark.usefixtures("private_cache")


def table(rows: dict[tuple[int, ...], list[float]], vocab: int = 4, prompt_len: int = 1):
    """A TableLM: the distribution after each new-token tuple (uniform where not listed)."""

    def fn(seq: list[int]) -> torch.Tensor:
        p = torch.tensor(rows.get(tuple(seq[prompt_len:]), [1.0 / vocab] * vocab))
        return torch.log(p)

    return TableLM(fn)


def ar_ids(lm, prompt: list[int], n: int) -> list[int]:
    return build_decoder("ar", lm).generate_ids(prompt, max_new_tokens=n, sampling=SamplingConfig()).token_ids


def logprob_of(lm, prompt: list[int], tokens: list[int]) -> float:
    """log p(tokens | prompt) from one full forward, no cache."""
    with torch.inference_mode():
        logits = lm.model(torch.tensor([prompt + tokens])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))


# ---- diverse beam search ------------------------------------------------------------------------
def test_two_groups_hand_computed():
    # vocab: 0 = EOS, 1, 2, 3; two beams in two groups, penalty 1, two new tokens.
    rows = {
        (): [0.05, 0.6, 0.3, 0.05],
        (1,): [0.1, 0.1, 0.2, 0.6],
        (2,): [0.1, 0.5, 0.2, 0.2],
    }
    beams = diverse_beam_search(
        table(rows), [3], num_beams=2, num_beam_groups=2, diversity_penalty=1.0, max_new_tokens=2, eos_ids={0}
    )
    # step 1: group 0 takes 1 (log .6); group 1 sees 1 at log .6 - 1 = -1.51 < log .3: takes 2.
    # step 2: group 0 extends [1] with 3 (log .36); group 1 extends [2] with 1 (log .15; 3 would
    # pay the penalty: log .3 + log .2 - 1). Final scores are divided by the length, 2.
    assert [b.token_ids for b in beams] == [[1, 3], [2, 1]]
    assert [b.score for b in beams] == pytest.approx([math.log(0.36) / 2, math.log(0.15) / 2], abs=1e-5)
    # without the penalty both groups are the same beam search: the same beam twice
    same = diverse_beam_search(
        table(rows), [3], num_beams=2, num_beam_groups=2, diversity_penalty=0.0, max_new_tokens=2, eos_ids={0}
    )
    assert [b.token_ids for b in same] == [[1, 3], [1, 3]]


def test_penalty_counts_every_earlier_group_and_stays_in_the_score():
    rows = {(): [0.02, 0.5, 0.3, 0.18]}
    beams = diverse_beam_search(
        table(rows), [3], num_beams=3, num_beam_groups=3, diversity_penalty=0.5, max_new_tokens=1, eos_ids={0}
    )
    # group 0: 1 (log .5). group 1: 1 costs log .5 - 0.5 = -1.193 > log .3 = -1.204: 1 again.
    # group 2: 1 costs log .5 - 2 x 0.5 = -1.693 < -1.204: takes 2.
    assert [b.token_ids for b in beams] == [[1], [1], [2]]
    assert [b.score for b in beams] == pytest.approx(
        [math.log(0.5), math.log(0.5) - 0.5, math.log(0.3)], abs=1e-5
    )


def test_eos_hypotheses_hand_computed():
    rows = {
        (): [0.4, 0.35, 0.25, 0.0],
        (1,): [0.9, 0.05, 0.03, 0.02],
        (2,): [0.1, 0.6, 0.2, 0.1],
    }
    beams = diverse_beam_search(
        table(rows), [3], num_beams=2, num_beam_groups=1, diversity_penalty=0.0, max_new_tokens=2, eos_ids={0}
    )
    # step 1: EOS ranks first: [EOS] finishes with log .4 / 1; beams [1], [2].
    # step 2: [1, EOS] finishes with log(.35 x .9) / 2; [2, 1] (log .15) and [2, 2] run on;
    # at the end [2, 1] scores log .15 / 2 = -0.949, below both finished ones.
    assert [b.token_ids for b in beams] == [[1, 0], [0]]
    assert [b.score for b in beams] == pytest.approx([math.log(0.315) / 2, math.log(0.4)], abs=1e-5)


@pytest.mark.parametrize(("vocab", "seed"), [(8, 0), (8, 1), (12, 1), (12, 2), (16, 0)])
def test_one_group_is_transformers_beam_search(vocab, seed):
    lm = tiny_model_for_tests(vocab_size=vocab, seed=seed, initializer_range=0.5)
    prompt = [5, 7, 3, 2]
    ours = diverse_beam_search(
        RowsLM(lm),
        prompt,
        num_beams=3,
        num_beam_groups=1,
        diversity_penalty=0.0,
        max_new_tokens=8,
        eos_ids={0},
    )
    ids = torch.tensor([prompt])
    out = lm.model.generate(
        ids, attention_mask=torch.ones_like(ids), num_beams=3, num_return_sequences=3, do_sample=False,
        max_new_tokens=8, eos_token_id=0, pad_token_id=0, length_penalty=1.0, early_stopping=False,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    theirs = [[int(t) for t in row[len(prompt) :]] for row in out.sequences]
    theirs = [r[: r.index(0) + 1] if 0 in r else r for r in theirs]  # cut the padding after EOS
    assert [b.token_ids for b in ours[:3]] == theirs
    assert [b.score for b in ours[:3]] == pytest.approx(out.sequences_scores.tolist(), abs=1e-4)


def test_diverse_beam_strategy_returns_the_best_beam(peaky):
    s = build_strategy("diverse-beam", peaky, options={"num_beams": 4, "num_beam_groups": 2})
    out = s.run([5, 7, 9, 3], max_new_tokens=6)
    assert len(out.candidates) == 4 and out.token_ids == out.candidates[0].token_ids
    assert out.score == max(c.score for c in out.candidates)
    assert out.forwards == 6  # one forward over all beams per token


def test_num_beams_must_split_into_groups(peaky):
    with pytest.raises(SpecDecodeError, match="multiple of num_beam_groups"):
        build_strategy("diverse-beam", peaky, options={"num_beams": 5, "num_beam_groups": 2})


# ---- superposed decoding ------------------------------------------------------------------------
def test_prompt_ngrams_hand_computed():
    ng = PromptNgrams([1, 2, 3, 1, 2, 4, 9], order=4)
    p = ng.distribution([7, 1, 2], vocab=10)
    # contexts (1, 2) -> {3, 4} and (7, 1, 2) unseen: one order matches
    assert p.tolist() == pytest.approx([0, 0, 0, 0.5, 0.5, 0, 0, 0, 0, 0])
    p = ng.distribution([3, 1, 2], vocab=10)  # (1, 2) -> {3: .5, 4: .5}; (3, 1, 2) -> {4: 1}
    assert p[4] == pytest.approx(0.75) and p[3] == pytest.approx(0.25)
    assert ng.distribution([5, 2], vocab=10) is None


def test_one_draft_without_ngrams_is_greedy_decoding(peaky):
    prompt = [5, 7, 9, 3, 11]
    lm = RowsLM(peaky)
    drafts = superposed_decode(
        lm, peaky.model.get_input_embeddings(), prompt, k=1, max_new_tokens=12, eos_ids=peaky.eos_token_ids,
        lm_weight=1.0, ngram_order=3,
    )  # fmt: skip
    expected = ar_ids(peaky, prompt, 12)
    assert drafts[0].token_ids == expected
    assert lm.forwards == len(expected)


def _superposed_reference(loaded, prompt, k, steps, lm_weight, order):
    """Superposed decoding recomputed from scratch each step: the whole input (prompt embeddings,
    then each step's weighted sum) through the model without a KV cache."""
    emb = loaded.model.get_input_embeddings()
    ng = PromptNgrams(prompt, order)
    with torch.inference_mode():
        inputs = [emb(torch.tensor(prompt))]

        def mixed(p, history):
            q = ng.distribution(history, p.shape[-1])
            return torch.log((p if q is None else lm_weight * p + (1 - lm_weight) * q).clamp_min(1e-30))

        def next_p():
            x = torch.cat(inputs)[None]
            return torch.softmax(loaded.model(inputs_embeds=x).logits[0, -1].float(), -1)

        first = mixed(next_p(), prompt)
        top = torch.topk(first, k)
        drafts = [([int(t)], float(v)) for v, t in zip(top.values, top.indices, strict=True)]
        for _ in range(steps - 1):
            w = torch.softmax(torch.tensor([s for _, s in drafts]), 0)
            inputs.append((w[:, None] * emb(torch.tensor([d[-1] for d, _ in drafts]))).sum(0, keepdim=True))
            p = next_p()
            ext = []
            for d, s in drafts:
                lp = mixed(p, prompt + d)
                for v, t in zip(*torch.topk(lp, k), strict=True):
                    ext.append((s + float(v), d + [int(t)]))
            ext.sort(key=lambda e: e[0], reverse=True)
            drafts = [(d, s) for s, d in ext[:k]]
    return sorted(((d, s / len(d)) for d, s in drafts), key=lambda e: e[1], reverse=True)


def test_superposed_matches_a_from_scratch_recomputation(peaky):
    prompt = [5, 7, 9, 3, 5, 7, 9, 4, 5, 7]  # repeats, so the n-grams take part
    lm = RowsLM(peaky)
    ours = superposed_decode(
        lm, peaky.model.get_input_embeddings(), prompt, k=3, max_new_tokens=8, eos_ids=set(),
        lm_weight=0.6, ngram_order=3,
    )  # fmt: skip
    ref = _superposed_reference(peaky, prompt, 3, 8, 0.6, 3)
    assert [c.token_ids for c in ours] == [d for d, _ in ref]
    assert [c.score for c in ours] == pytest.approx([s for _, s in ref], abs=1e-4)
    assert lm.forwards == 8  # k drafts, one pass
    assert len({tuple(c.token_ids) for c in ours}) == 3


# ---- exact-extract ------------------------------------------------------------------------------
CONTEXT = [21, 34, 8, 50, 34, 13, 40]  # 34 occurs twice: a span may continue either occurrence


def _is_span(tokens: list[int], context: list[int]) -> bool:
    n = len(tokens)
    return any(context[i : i + n] == tokens for i in range(len(context) - n + 1))


def test_the_answer_is_a_verbatim_span_where_the_model_wanders(peaky):
    prompt = [3, 5, 7, 9] + CONTEXT + [2, 6]
    free = ar_ids(peaky, prompt, 8)
    assert not _is_span([t for t in free if t != 0], CONTEXT)  # unconstrained, it says something else
    s = build_strategy("exact-extract", peaky, options={"num_beams": 1})
    out = s.run(prompt, max_new_tokens=8, context=" ".join(f"t{t}" for t in CONTEXT))
    span = out.token_ids[:-1] if out.finish_reason == "eos" else out.token_ids
    assert span and _is_span(span, CONTEXT)
    assert out.text in " ".join(f"t{t}" for t in CONTEXT)
    start = out.stats["span_start_token"]
    assert CONTEXT[start : start + len(span)] == span
    assert out.score == pytest.approx(logprob_of(peaky, prompt, out.token_ids), abs=1e-4)


def test_a_wide_search_finds_the_best_span_of_all(peaky):
    prompt = [3, 5, 7, 9] + CONTEXT + [2, 6]
    eos = peaky.eos_token_ids
    tokens, score, reason, _ = extract_span(
        RowsLM(peaky), prompt, CONTEXT, max_new_tokens=len(CONTEXT) + 1, eos_ids=eos, num_beams=64
    )
    spans = {tuple(CONTEXT[i:j]) for i in range(len(CONTEXT)) for j in range(i + 1, len(CONTEXT) + 1)}
    brute = max(spans, key=lambda s: logprob_of(peaky, prompt, [*s, 0]))
    assert reason == "eos" and tokens == [*brute, 0]
    assert score == pytest.approx(logprob_of(peaky, prompt, tokens), abs=1e-4)


def test_greedy_span_takes_the_likeliest_context_token_first(peaky):
    prompt = [3, 5, 7, 9, 4]
    tokens, _, _, _ = extract_span(RowsLM(peaky), prompt, CONTEXT, max_new_tokens=4, eos_ids={0}, num_beams=1)
    with torch.inference_mode():
        logits = peaky.model(torch.tensor([prompt])).logits[0, -1]
    assert tokens[0] == max(set(CONTEXT), key=lambda t: float(logits[t]))


def test_an_empty_context_is_refused(peaky):
    with pytest.raises(SpecDecodeError, match="context is empty"):
        extract_span(RowsLM(peaky), [3, 4], [], max_new_tokens=4, eos_ids={0})


# ---- entropy-adaptive ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair():
    large = tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3)
    small = tiny_model_for_tests(vocab_size=64, seed=8, initializer_range=0.3)
    return large, small


def test_threshold_extremes_give_either_model_alone(pair):
    large, small = pair
    prompt = [5, 7, 9, 3, 11, 12]
    only_large = build_strategy("entropy-adaptive", large, draft=small, options={"threshold": 0.0})
    out = only_large.run(prompt, max_new_tokens=12)
    assert out.token_ids == ar_ids(large, prompt, 12) and out.stats["large_share"] == 1.0
    only_small = build_strategy("entropy-adaptive", large, draft=small, options={"threshold": math.inf})
    out = only_small.run(prompt, max_new_tokens=12)
    assert out.token_ids == ar_ids(small, prompt, 12) and out.stats["large_share"] == 0.0
    assert out.stats["large_forwards"] == 0


def test_each_token_comes_from_the_model_the_entropy_picks(pair):
    large, small = pair
    prompt = [5, 7, 9, 3, 11, 12]

    def dist(lm, ids):
        with torch.inference_mode():
            return torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)

    hs = []
    ids = list(prompt)
    for _ in range(12):  # the entropies along the small model's own greedy path, to pick a threshold
        lp = dist(small, ids)
        hs.append(entropy(lp))
        ids.append(int(lp.argmax()))
    threshold = sorted(hs)[len(hs) // 2]
    out = build_strategy("entropy-adaptive", large, draft=small, options={"threshold": threshold}).run(
        prompt, max_new_tokens=12
    )
    seq, from_large = list(prompt), 0
    for t in out.token_ids:  # recompute each choice from full forwards
        lp = dist(small, seq)
        use_large = entropy(lp) > threshold
        expected = int(dist(large, seq).argmax()) if use_large else int(lp.argmax())
        assert t == expected
        from_large += use_large
        seq.append(t)
    assert 0 < out.stats["large_tokens"] == from_large < len(out.token_ids)


def test_entropy_of_a_known_distribution():
    assert entropy(torch.log(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2))
    assert entropy(torch.log(torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)


def _byte_bpe(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    backend.train_from_iterator(["the cat sat on the mat", "a dog and a cat", "x = 1 + 2"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def _with(tokenizer, seed):
    lm = tiny_model_for_tests(vocab_size=len(tokenizer), seed=seed, eos_token_id=None, initializer_range=0.3)
    return dataclasses.replace(lm, tokenizer=tokenizer, key=f"strategies-bpe-{seed}")


def test_different_tokenizers_meet_in_text():
    large, small = _with(_byte_bpe(290), 31), _with(_byte_bpe(272), 32)
    assert large.tokenizer.get_vocab() != small.tokenizer.get_vocab()
    prompt = large.tokenizer.encode("the cat sat on")
    out = build_strategy("entropy-adaptive", large, draft=small, options={"threshold": 0.0}).run(
        prompt, max_new_tokens=10
    )
    assert out.token_ids == ar_ids(large, prompt, 10) and not out.stats["shared_vocabulary"]
    out = build_strategy("entropy-adaptive", large, draft=small, options={"threshold": math.inf}).run(
        prompt, max_new_tokens=10
    )
    small_prompt = small.tokenizer.encode(large.tokenizer.decode(prompt))
    expected = small.tokenizer.decode(ar_ids(small, small_prompt, 10))
    assert large.tokenizer.decode(out.token_ids) == expected


def test_entropy_adaptive_needs_a_draft(pair):
    with pytest.raises(SpecDecodeError, match="needs a draft model"):
        build_strategy("entropy-adaptive", pair[0])


# ---- registry, CLI, API, bench ------------------------------------------------------------------
def test_registry_and_cli_choices_agree():
    from specdecode.cli import build_parser

    names = {s.name for s in list_strategies()}
    assert names == {"diverse-beam", "superposed", "exact-extract", "entropy-adaptive"}
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    assert set(next(a for a in generate._actions if a.dest == "strategy").choices) == names
    assert get_strategy("entropy-adaptive").needs_draft


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    lm = tiny_model_for_tests(vocab_size=48, seed=5, initializer_range=0.3)
    folder = tmp_path_factory.mktemp("tiny-strategies")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_diverse_beam_json(capsys, tiny_folder):
    code, out, _ = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--json", "--strategy",
                       "diverse-beam", "--num-beams", "4", "--num-beam-groups", "2", "--diversity-penalty",
                       "2", "--max-new-tokens", "5", "t3 t4 t5")  # fmt: skip
    assert code == 0
    r = json.loads(out)
    assert r["strategy"] == "diverse-beam" and len(r["candidates"]) == 4
    assert r["token_ids"] == r["candidates"][0]["token_ids"] and r["text"] == r["candidates"][0]["text"]


def test_cli_extract_from_file(capsys, tiny_folder, tmp_path):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("t20 t21 t22 t23 t24 t25")
    code, out, err = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--extract-from",
                         str(ctx), "--max-new-tokens", "4", "t9 t10")  # fmt: skip
    assert code == 0 and out.strip() and out.strip() in "t20 t21 t22 t23 t24 t25"
    assert "[exact-extract]" in err and "score" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-drafts", "3"], "belongs to --strategy superposed"),
        (["--strategy", "diverse-beam", "--num-beams", "5"], "multiple of --num-beam-groups"),
        (["--strategy", "superposed", "--num-beams", "4"], "--num-beams is an option of diverse-beam"),
        (["--strategy", "superposed", "--temperature", "0.7"], "decodes greedily"),
        (["--strategy", "entropy-adaptive"], "needs a draft model"),
        (["--strategy", "superposed", "--method", "pld"], "exclude each other"),
        (["--extract-from", "/nonexistent/file.txt"], "cannot read it"),
        (["--strategy", "superposed", "--num-drafts", "0"], "must be >= 1"),
    ],
)
def test_cli_bad_strategy_input_is_one_line(capsys, tiny_folder, argv, message):
    code, out, err = run(capsys, "generate", "--model", str(tiny_folder), "--raw", *argv, "t3 t4")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_api_generate_with_a_strategy(tiny_folder):
    import specdecode

    r = specdecode.generate(
        "t3 t4 t5", model=str(tiny_folder), raw=True, strategy="superposed", options={"num_drafts": 2},
        max_new_tokens=4,
    )  # fmt: skip
    assert r.strategy == "superposed" and len(r.candidates) == 2 and r.new_tokens == len(r.token_ids) <= 4
    with pytest.raises(SpecDecodeError, match="decodes greedily on its own"):
        specdecode.generate("t3", model=str(tiny_folder), strategy="superposed", temperature=0.5)
    with pytest.raises(SpecDecodeError, match="unknown strategy"):
        specdecode.generate("t3", model=str(tiny_folder), strategy="nope")


def test_bench_runs_strategies_beside_ar(peaky):
    from specdecode.bench.datasets import Prompt
    from specdecode.bench.runner import BenchConfig, run_bench

    prompts = [Prompt(id=f"p{i}", category="c", text=t) for i, t in enumerate(["t3 t4 t5 t3 t4", "t9 t8 t7"])]
    config = BenchConfig(
        methods=["ar", "diverse-beam", "superposed", "exact-extract"], max_new_tokens=6, warmup=0, out=None,
        raw=True, calibration="off", progress=False,
    )  # fmt: skip
    result = run_bench(config, target=peaky, prompts=prompts, log=lambda m: None).result
    for m in ("diverse-beam", "superposed", "exact-extract"):
        assert result["summary"][m]["prompts"] == 2
        assert result["summary"][m]["identical_to_ar"] is not None  # compared with ar
    from specdecode.bench.report import markdown_report

    assert result["summary"]["exact-extract"]["differs_from_ar"] > 0
    md = markdown_report(result)
    assert "| exact-extract | p" in md and "lossy by design" in md and "REAL ERROR" not in md
    # they do not sample: refused before anything runs
    with pytest.raises(SpecDecodeError, match="decode greedily"):
        run_bench(
            dataclasses.replace(config, temperature=0.7), target=peaky, prompts=prompts, log=lambda m: None
        )


def test_a_word_across_the_switch_is_tokenized_as_one():
    from specdecode.strategies.entropy_adaptive import _Side

    lm = _with(_byte_bpe(290), 33)
    tok = lm.tokenizer
    assert len(tok.encode("the")) == 1 and len(tok.encode("t")) == 1  # "t" + "he" merge into "the"
    side = _Side(lm, tok.encode("a dog"))
    side.reader.logprobs(side.ids + tok.encode("t"))  # this side wrote "t" and read it
    side.ids += tok.encode("t")
    side.covered = 1
    side.sync("the cat")  # the other model went on with "he cat"
    assert side.ids[side.prompt_len :] == tok.encode("the cat")
    assert side.reader.fed == side.prompt_len  # "t" is forgotten, to be read again as "the"


def test_cli_lists_the_strategies(capsys):
    code, out, _ = run(capsys, "methods", "--strategies")
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()} == {s.name for s in list_strategies()}


def test_cli_entropy_adaptive_reports_the_large_share(capsys, tiny_folder):
    base = ["generate", "--model", str(tiny_folder), "--raw", "--max-new-tokens", "6", "t3 t4 t5"]
    code, plain, _ = run(capsys, *base)
    code, out, err = run(capsys, *base, "--strategy", "entropy-adaptive", "--draft", str(tiny_folder),
                         "--entropy-threshold", "0")  # fmt: skip
    assert code == 0 and out == plain  # the large model writes every token: its own greedy text
    import re

    m = re.search(r"(\d+)/(\d+) tokens from the large model", err)
    assert m and m.group(1) == m.group(2) != "0"


def test_cli_extract_from_stdin(capsys, tiny_folder, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("t30 t31 t32 t33"))
    code, out, _ = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--extract-from", "-",
                       "--max-new-tokens", "3", "t9 t10")  # fmt: skip
    assert code == 0 and out.strip() and out.strip() in "t30 t31 t32 t33"
    monkeypatch.setattr("sys.stdin", io.StringIO("t30 t31"))
    code, _, err = run(capsys, "generate", "--model", str(tiny_folder), "--raw", "--extract-from", "-", "-")
    assert code == 2 and "cannot both come from stdin" in err
