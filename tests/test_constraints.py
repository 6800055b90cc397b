"""Constrained generation: speculative output under a grammar equals masked plain decoding.

The reference (:func:`masked_greedy`) is written here independently of the library: one token
per forward, the grammar's mask applied to the logits, argmax. Tiny models get a byte-level
BPE tokenizer (llguidance needs token bytes; the word-level test tokenizer has no decoder it
can read, which is itself checked as a clean error).
"""

import dataclasses
import json
import math
from collections import Counter

import jsonschema
import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from bytebpe import byte_bpe
from lossless import chi_square_pvalue
from specdecode.constraints import compile_constraint
from specdecode.drafters.base import Drafter
from specdecode.engine import Decoder, build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.target import Target
from specdecode.tree import DraftTree

pytestmark = pytest.mark.usefixtures("private_cache")

MERGES = [("{", '"'), ('"', ":"), ('"', ","), ("Ġ", '"'), ("t", "r"), ("tr", "u"), ("tru", "e"), ("a", "b")]
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "kind": {"enum": ["cat", "dog"]},
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["ok", "kind", "n", "tags"],
    "additionalProperties": False,
}


def byte_tokenizer(eos: bool = True) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE: 256 byte tokens (ids 1..256), a few merges, ``<eos>`` = 0."""
    return byte_bpe(MERGES, eos)[0]


def byte_model(seed: int = 3, eos: bool = True, **overrides):
    tok = byte_tokenizer(eos)
    settings = {"initializer_range": 0.3, **overrides}
    lm = tiny_model_for_tests(vocab_size=len(tok), seed=seed, eos_token_id=0 if eos else None, **settings)
    return dataclasses.replace(lm, tokenizer=tok, key=f"{lm.key}-bytes")


@pytest.fixture(scope="module")
def lm():
    return byte_model()


def mask_of(matcher, width: int, eos=None) -> torch.Tensor:
    """The grammar's mask; llguidance's end token only where it is one of the model's ``eos``."""
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    out = torch.zeros(width, dtype=torch.bool)
    n = min(width, len(bits))
    out[:n] = torch.from_numpy(bits[:n].astype(bool))
    if eos is not None and 0 not in eos:
        out[0] = False  # the byte tokenizer's <eos> (id 0) when the model has no EOS
    return out


@torch.inference_mode()
def masked_greedy(loaded, constraint, prompt: list[int], n: int) -> tuple[list[int], str]:
    """Plain greedy decoding with the grammar's mask at every step (the reference)."""
    matcher = constraint.matcher()
    eos = loaded.eos_token_ids
    target = Target(loaded)
    logits = target.prefill(prompt)
    out: list[int] = []
    while len(out) < n:
        mask = mask_of(matcher, logits.shape[-1], eos)
        if not mask.any():
            return out, "constraint"
        token = int(logits.masked_fill(~mask, float("-inf")).argmax())
        out.append(token)
        if token in eos:
            return out, "eos"
        assert matcher.consume_token(token)
        logits = target.score(token, _EMPTY)[0]
        target.commit([])
    return out, "length"


_EMPTY = DraftTree.empty()


# Every drafter that needs no training: the composable ones (pld, recycling, aded, suffix),
# their hybrid, the Jacobi family, and the draft-model methods with the target as its own draft.
METHODS = ["ar", "pld", "recycling", "aded", "suffix", "hybrid", "lookahead", "sjd"]
DRAFT_METHODS = ["draft-model", "dyspec"]


def drafter_methods() -> list[tuple[str, dict]]:
    return [(m, {}) for m in METHODS] + [(m, {"draft": True}) for m in DRAFT_METHODS]


def decoder_for(name: str, lm, draft: bool = False):
    return build_decoder(name, lm, draft=lm if draft else None)


PROMPT_TEXT = 'ab c ab c abcd {"ok": true, "kind": "dog", "n": 7, "tags": ["ab"]} ab c'


@pytest.mark.parametrize(
    "kind,value",
    [
        ("regex", r"(ab|c| )+d"),
        ("json_schema", SCHEMA),
        ("grammar", 'start: "x" item+ "."\nitem: "ab" | "c" | " "'),
    ],
)
def test_greedy_equals_masked_greedy_for_every_drafter(lm, kind, value):
    constraint = compile_constraint(lm, **{kind: value})
    prompt = lm.tokenizer.encode(PROMPT_TEXT, add_special_tokens=False)
    want, why = masked_greedy(lm, constraint, prompt, 40)
    for name, extra in drafter_methods():
        r = decoder_for(name, lm, **extra).generate_ids(prompt, max_new_tokens=40, constraint=constraint)
        assert r.token_ids == want, name
        assert r.finish_reason == why, name


def test_output_follows_the_schema_and_jump_forward_saves_forwards(lm):
    constraint = compile_constraint(lm, json_schema=SCHEMA)
    plain = compile_constraint(lm, json_schema=SCHEMA, jump_forward=False)
    for seed in range(4):
        prompt = lm.tokenizer.encode(PROMPT_TEXT[seed:], add_special_tokens=False)
        fast = decoder_for("ar", lm).generate_ids(prompt, max_new_tokens=120, constraint=constraint)
        slow = decoder_for("ar", lm).generate_ids(prompt, max_new_tokens=120, constraint=plain)
        assert fast.token_ids == slow.token_ids
        assert fast.finish_reason == "eos"
        jsonschema.validate(json.loads(fast.text), SCHEMA)
        # the keys and punctuation are forced: drafted for free and accepted
        assert fast.steps < slow.steps and slow.mean_accepted == 1.0


def test_no_forbidden_token_is_scored(lm, monkeypatch):
    """Every path of every scored tree is grammar-valid (pruned before the forward)."""
    constraint = compile_constraint(lm, regex=r"(ab|c| )+d")
    prompt = lm.tokenizer.encode(PROMPT_TEXT, add_special_tokens=False)
    scored = []
    real_score = Target.score

    def recording(self, root, tree):
        scored.append(tree)
        return real_score(self, root, tree)

    monkeypatch.setattr(Target, "score", recording)
    eos = lm.eos_token_ids
    for name in ("pld", "hybrid", "lookahead"):
        scored.clear()
        steps = list(decoder_for(name, lm).steps(prompt, SamplingConfig(), 40, constraint=constraint))
        assert len(scored) == len(steps) - 1  # the first token comes from the prefill
        context: list[int] = []
        for tree, step in zip(scored, steps, strict=False):
            context += step.tokens  # committed before this tree was scored
            for node in range(len(tree)):
                path = [tree.tokens[i] for i in tree.path_to(node)]
                m = constraint.matcher()
                assert m.consume_tokens(context)
                if path[-1] in eos:  # EOS only where the grammar accepts
                    assert m.consume_tokens(path[:-1]) and m.is_accepting(), name
                else:
                    assert m.validate_tokens(path) == len(path), name
        assert sum(len(t) for t in scored) > 0, name


class Forbidding(Drafter):
    """Proposes the same tree every step, two of its five nodes forbidden by ``[xyz]+``:
    root -> q (forbidden), y, z; z -> a (forbidden), z. Records what it is told."""

    def __init__(self, tok):
        q, y, z, a = (tok.convert_tokens_to_ids(c) for c in "qyza")
        self.tree = DraftTree([q, y, z, a, z], [-1, -1, -1, 2, 2])
        self.seen = []

    def propose(self, tokens, max_depth):
        return self.tree if max_depth >= 2 else DraftTree.empty()

    def observe(self, outcome):
        self.seen.append((outcome.tree, outcome.logits.shape[0], outcome.verdict.path))


def test_forbidden_drafts_are_not_scored_and_the_drafter_sees_its_own_tree(lm):
    constraint = compile_constraint(lm, regex=r"[xyz]{3,30}", jump_forward=False)
    prompt = lm.tokenizer.encode("ab ab", add_special_tokens=False)
    want, _ = masked_greedy(lm, constraint, prompt, 20)  # "yzz" then EOS
    drafter = Forbidding(lm.tokenizer)
    decoder = Decoder("forbidding", lm, drafter)
    steps = list(decoder.steps(prompt, SamplingConfig(), 20, constraint=constraint))
    assert [t for s in steps for t in s.tokens] == want
    assert all(s.drafted == 3 for s in steps[1:-1])  # y, z, z -> z
    assert len(drafter.seen) == len(steps) - 1
    for (tree, rows, path), step in zip(drafter.seen, steps[1:], strict=True):
        assert tree is drafter.tree and rows == 6  # its own five nodes, one row each (and the root's)
        assert len(path) == step.accepted and [tree.tokens[i] for i in path] == step.tokens[: len(path)]
    assert any(path for _, _, path in drafter.seen)


def test_dead_end_ends_with_finish_reason_constraint():
    lm = byte_model(eos=False)
    # the word-level test tokenizer has no decoder llguidance can read: one clear line
    with pytest.raises(SpecDecodeError, match="cannot use this model's tokenizer"):
        compile_constraint(tiny_model_for_tests(vocab_size=32), regex="t1")
    constraint = compile_constraint(lm, regex="abcd")
    prompt = lm.tokenizer.encode("ab c", add_special_tokens=False)
    want, why = masked_greedy(lm, constraint, prompt, 20)
    assert why == "constraint" and lm.tokenizer.decode(want) == "abcd"
    for name in ("ar", "hybrid"):
        r = decoder_for(name, lm).generate_ids(prompt, max_new_tokens=20, constraint=constraint)
        assert (r.token_ids, r.finish_reason) == (want, "constraint")
        pieces = list(decoder_for(name, lm).stream(prompt, max_new_tokens=20, constraint=constraint))
        assert "".join(p.text for p in pieces) == "abcd" and pieces[-1].finish_reason == "constraint"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"json_schema": "{not json"}, "not valid JSON"),
        ({"json_schema": {"type": "objectx"}}, "JSON schema is invalid"),
        ({"regex": "(ab"}, "regex is invalid"),
        ({"grammar": "start: foo"}, "Lark grammar is invalid"),
        ({"regex": "a", "grammar": "start: 'a'"}, "not several"),
        ({}, "give one constraint"),
    ],
)
def test_bad_constraints_are_one_line(lm, kwargs, message):
    with pytest.raises(SpecDecodeError, match=message) as e:
        compile_constraint(lm, **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--json-schema", "{missing}"], "does not exist"),
        (["--json-schema", "{bad_json}"], "is not valid JSON"),
        (["--json-schema", "{bad_schema}"], "JSON schema is invalid: Invalid type: objectx"),
        (["--regex", "(ab"], "regex is invalid"),
        (["--grammar", "{bad_lark}"], "Lark grammar is invalid"),
        (["--regex", "a", "--grammar", "{bad_lark}"], "not allowed with argument"),
    ],
)
def test_cli_bad_constraints_are_one_line_before_loading(capsys, tmp_path, monkeypatch, argv, message):
    from specdecode import api
    from specdecode.cli import main

    files = {
        "missing": tmp_path / "none.json",
        "bad_json": tmp_path / "a.json",
        "bad_lark": tmp_path / "g.lark",
    }
    files["bad_schema"] = tmp_path / "s.json"
    files["bad_json"].write_text("{not json")
    files["bad_schema"].write_text('{"type": "objectx"}')
    files["bad_lark"].write_text("start: foo")
    monkeypatch.setattr(api, "get_decoder", lambda *a, **k: pytest.fail("loaded a model"))
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    try:
        code = main(["generate", *argv, "hello"])
    except SystemExit as e:  # argparse (two of the options at once): its usage, then the line
        code = e.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in lines[-1]
    assert len(lines) == 1 or lines[0].startswith("usage:")


def test_bench_prompts_with_a_schema(lm, tmp_path):
    from specdecode.bench.datasets import read_jsonl
    from specdecode.bench.runner import BenchConfig, run_bench

    lines = [{"id": "j", "prompt": PROMPT_TEXT, "schema": SCHEMA}, {"id": "free", "prompt": "ab c ab"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = BenchConfig(
        methods=["ar", "hybrid", "hf-ar"], max_new_tokens=120, warmup=0, plots=False, progress=False,
        raw=True, calibration="off", out=tmp_path / "bench.json",
    )  # fmt: skip
    res = run_bench(cfg, target=lm, prompts=read_jsonl(path), log=lambda m: None)
    constrained = [r for r in res.records if r.prompt_id == "j"]
    assert len(constrained) == 3
    for r in constrained:  # every method, hf-ar's generate() included, under the schema
        body = [t for t in r.token_ids if t not in lm.eos_token_ids]
        jsonschema.validate(json.loads(lm.tokenizer.decode(body)), SCHEMA)
    assert len({tuple(r.token_ids) for r in constrained}) == 1  # greedy: one answer
    free = [r for r in res.records if r.prompt_id == "free"][0]
    with pytest.raises(ValueError):
        json.loads(lm.tokenizer.decode(free.token_ids))  # the prompt without a schema is free text
    path.write_text(json.dumps({"id": "bad", "prompt": "x", "schema": {"type": "objectx"}}) + "\n")
    with pytest.raises(SpecDecodeError, match="prompt 'bad': the JSON schema is invalid"):
        run_bench(cfg, target=lm, prompts=read_jsonl(path), log=lambda m: None)
    path.write_text(json.dumps({"id": "bad", "prompt": "x", "schema": "object"}) + "\n")
    with pytest.raises(SpecDecodeError, match="'schema' must be a JSON schema"):
        read_jsonl(path)


def test_server_response_format(tmp_path, monkeypatch):
    import openai

    from specdecode.server import Limits, ServerConfig, create_app
    from specdecode.server.serving import serve_in_thread

    lm = byte_model()
    lm.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    app = create_app(lm, ServerConfig(method="hybrid", limits=Limits(max_tokens=200, default_max_tokens=120)))
    messages = [{"role": "user", "content": PROMPT_TEXT}]
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
    with (
        serve_in_thread(app) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0) as client,
    ):
        r = client.chat.completions.create(
            model=lm.name, messages=messages, response_format=fmt, temperature=0
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        assert r.choices[0].finish_reason == "stop"
        parts = list(
            client.chat.completions.create(
                model=lm.name, messages=messages, response_format={"type": "json_object"}, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        finish = [c.choices[0].finish_reason for c in parts if c.choices][-1]
        # any JSON object: a random model's string may run to max_tokens; complete ones parse
        assert text.startswith("{") and (finish == "length" or isinstance(json.loads(text), dict))
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}
        with pytest.raises(openai.BadRequestError, match="JSON schema is invalid"):
            client.chat.completions.create(model=lm.name, messages=messages, response_format=bad)
        with pytest.raises(openai.BadRequestError, match="response_format.type"):
            client.chat.completions.create(model=lm.name, messages=messages, response_format={"type": "yaml"})


# ---- sampling: the locally masked distribution -----------------------------------------------
@torch.inference_mode()
def masked_joint(loaded, constraint, prompt, cfg) -> dict:
    """P(new token 2, new token 3) under plain sampling from the masked distribution, enumerated."""
    model = loaded.model

    def probs(ids, matcher):
        logits = model(torch.tensor([ids])).logits[0, -1]
        mask = mask_of(matcher, logits.shape[-1])
        return target_probs(logits.masked_fill(~mask, float("-inf")), cfg)

    joint: dict = {}
    m = constraint.matcher()
    p1 = probs(prompt, m)
    for t1 in p1.nonzero().flatten().tolist():
        m.consume_token(t1)
        p2 = probs(prompt + [t1], m)
        for t2 in p2.nonzero().flatten().tolist():
            m.consume_token(t2)
            p3 = probs(prompt + [t1, t2], m)
            for t3 in p3.nonzero().flatten().tolist():
                joint[(t2, t3)] = joint.get((t2, t3), 0.0) + float(p1[t1] * p2[t2] * p3[t3])
            m.rollback(1)
        m.rollback(1)
    return joint


@pytest.mark.parametrize("renormalize", [True, False])
def test_sampled_drafts_pruned_by_the_grammar_keep_the_masked_distribution(lm, monkeypatch, renormalize):
    """A sampled draft x ~ q (q puts 0.4 on a forbidden token): verified against the masked p'
    with q renormalized to the allowed tokens the first token follows p' exactly; with the raw
    q it does not (the negative control shows the test can tell)."""
    import specdecode.constraints.guide as guide_module

    constraint = compile_constraint(lm, regex=r"[abc]+")
    a, b, c, z = (lm.tokenizer.convert_tokens_to_ids(t) for t in "abcz")
    width = len(lm.tokenizer)
    q = torch.zeros(width)
    q[a], q[z] = 0.6, 0.4
    logits = torch.full((2, width), float("-inf"))
    for t, pr in ((a, 0.2), (b, 0.3), (c, 0.1), (z, 0.4)):
        logits[:, t] = math.log(pr)
    if not renormalize:
        monkeypatch.setattr(guide_module.Guide, "_fit", staticmethod(lambda mask, w: torch.ones(w)))
    cfg = SamplingConfig(temperature=1.0, coupling="residual")
    gen = torch.Generator().manual_seed(0)
    counts: Counter = Counter()
    for _ in range(1500):
        x = int(torch.multinomial(q, 1, generator=gen))
        g = constraint.guide(lm, cfg)
        tree = g.wrap(Scripted(DraftTree.chain([x], q[None]))).propose([a], 1)
        counts[g.verify(tree, logits[: len(tree) + 1], cfg, gen).tokens[0]] += 1
    p_masked = {a: 1 / 3, b: 1 / 2, c: 1 / 6}
    assert (chi_square_pvalue(counts, p_masked) > 1e-3) == renormalize


class Scripted(Drafter):
    def __init__(self, tree):
        self.tree = tree

    def propose(self, tokens, max_depth):
        return self.tree


@pytest.mark.parametrize("name,coupling", [("hybrid", "residual"), ("pld", "gumbel")])
def test_sampling_follows_the_locally_masked_distribution(name, coupling):
    """New tokens 2 and 3 (the first ones a drafter acts on) against the enumerated joint."""
    lm = byte_model(seed=5, initializer_range=0.05)  # flat enough that several paths are likely
    constraint = compile_constraint(lm, regex=r"(ab|a|b|c)(ab|a|b|c)+[abc]+d")
    prompt = lm.tokenizer.encode("abcabcabcab", add_special_tokens=False)
    decoder = decoder_for(name, lm)
    counts: Counter = Counter()
    drafted = 0
    for seed in range(700):
        c = SamplingConfig(1.0, seed=seed, coupling=coupling)
        r = decoder.generate_ids(prompt, max_new_tokens=3, sampling=c, constraint=constraint)
        counts[tuple(r.token_ids[1:3])] += 1
        drafted += r.drafted
    joint = masked_joint(lm, constraint, prompt, SamplingConfig(temperature=1.0))
    assert len(joint) > 5 and drafted > 0  # several likely outcomes, and the drafter took part
    assert chi_square_pvalue(counts, joint) > 1e-3


# ---- the real default model ------------------------------------------------------------------
PEOPLE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["engineer", "doctor", "teacher", "other"]},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4},
    },
    "required": ["name", "age", "role", "skills"],
    "additionalProperties": False,
}
REAL_PROMPTS = [
    "Extract the person as JSON: Maria Lopez, 34, is an engineer who knows Python and Rust.",
    "Extract the person as JSON: Dr. Ken Ito (52) works as a doctor; he speaks Japanese.",
    "Extract the person as JSON: Sam, a 28 year old teacher, likes chess, maths and running.",
]


@pytest.mark.real_model
def test_real_model_greedy_equals_masked_greedy(default_model):
    constraint = compile_constraint(default_model, json_schema=PEOPLE)
    ids = default_model.encode_prompt(REAL_PROMPTS[0])
    want, why = masked_greedy(default_model, constraint, ids, 48)
    for name in ("ar", "pld", "recycling", "aded", "suffix", "hybrid"):  # the composable ones
        r = build_decoder(name, default_model).generate_ids(ids, max_new_tokens=48, constraint=constraint)
        assert r.token_ids == want, name
        assert r.finish_reason == why, name


@pytest.mark.real_model
def test_real_model_outputs_are_valid_through_the_api(default_model):
    import specdecode

    first = specdecode.generate(REAL_PROMPTS[0], method="hybrid", json_schema=PEOPLE, max_new_tokens=160)
    pieces = list(specdecode.stream(REAL_PROMPTS[1], method="pld", json_schema=json.dumps(PEOPLE)))
    assert first.finish_reason == pieces[-1].finish_reason == "eos"
    assert first.mean_accepted > 1.5  # forced keys and punctuation ride along with each forward
    for text in (first.text, "".join(p.text for p in pieces)):
        jsonschema.validate(json.loads(text), PEOPLE)
    constraint = compile_constraint(default_model, regex=r"[A-Z][a-z]+ is [0-9]{1,3} years old\.")
    ids = default_model.encode_prompt(REAL_PROMPTS[2])
    r = build_decoder("hybrid", default_model).generate_ids(ids, max_new_tokens=40, constraint=constraint)
    body = r.token_ids[:-1]
    assert r.finish_reason == "eos" and constraint.matcher().validate_tokens(body) == len(body)
