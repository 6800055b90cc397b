"""Monitor-guided decoding for Python: after ``obj.`` only names jedi lists, with speculation on.

The reference (:func:`monitored_greedy`) is written here independently of the library's
matcher: one token per forward, and each token's validity decided by re-scanning the whole
text (prompt code + answer + that token) for attribute-access dots and checking the name after
each against what jedi lists there (:func:`reference_ok`), then argmax over the valid tokens.
jedi itself is the oracle of names (asked through ``Monitor.names``, with its own cache).
Tiny models get a byte-level BPE tokenizer whose token bytes are known here.
"""

import dataclasses
import re

import pytest
import torch

from bytebpe import byte_bpe
from specdecode.constraints.monitor import Monitor, monitor_constraint
from specdecode.drafters.base import Drafter
from specdecode.engine import Decoder, build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.target import Target
from specdecode.tree import DraftTree

pytestmark = pytest.mark.usefixtures("private_cache")

SHOP = '''\
class Store:
    """A shop's stock."""

    def __init__(self, name):
        self.name = name
        self.stock = {}

    def restock_from_supplier(self, supplier, items):
        for item, n in items.items():
            self.stock[item] = self.stock.get(item, 0) + n
        return self

    def sell_item_v3(self, item):
        self.stock[item] -= 1
        return self.stock[item]
'''
HEAD = "from shop import Store\n\nstore = Store('corner')\n"
# an invented name (sell_item) in the prompt: drafters that copy it propose invalid names
CODE = HEAD + "store.sell_item(1)\nstore.restock_from_supplier(None, {})\nstore."
STORE_NAMES = {"name", "stock", "restock_from_supplier", "sell_item_v3"}
# merges that make multi-byte tokens, some with a dot inside (checked past the dot)
MERGES = [("s", "t"), ("st", "o"), ("r", "e"), ("re", "s"), ("o", "c"), ("e", "l"), ("_", "_"),
          (")", "."), (".", "_"), ("(", ")"), ("()", "."), ("n", "a"), ("na", "m"),
          ("S", "t"), ("St", "o"), ("Sto", "r"), ("Stor", "e"), ("Ġ", "S"), ("Ġ", "Store"), (",", "Ġ")]  # fmt: skip


def code_tokenizer():
    """GPT-2-style byte-level BPE: 256 byte tokens (ids 1..256), the merges, ``<eos>`` = 0.
    Returns the tokenizer and each token's bytes."""
    tok, vocab, byte_of = byte_bpe(MERGES)
    texts = [b""] * len(vocab)
    for s, i in vocab.items():
        if i:
            texts[i] = bytes(byte_of[c] for c in s)
    # llguidance has no bytes for the token b"\xff" (which UTF-8 never holds): the monitor treats
    # it as a special token, which ends a name like any non-identifier byte (NUL here)
    texts[vocab[next(s for s, b in byte_of.items() if b == 0xFF)]] = b"\0"
    return tok, texts


@pytest.fixture(scope="module")
def lm():
    tok, texts = code_tokenizer()
    base = tiny_model_for_tests(vocab_size=len(tok), seed=5, eos_token_id=0, initializer_range=0.3)
    return dataclasses.replace(base, tokenizer=tok, key=f"{base.key}-code-bytes"), texts


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo")
    (path / "shop.py").write_text(SHOP)
    return path


@pytest.fixture(scope="module")
def oracle(repo):
    return Monitor(repo).names  # jedi's names at a dot, with a cache of its own


# ---- the reference ------------------------------------------------------------------------------
WORD = re.compile(rb"[A-Za-z0-9_\x80-\xff]*")


IMPORT_LINE = re.compile(rb"[ \t]*from[ \t]+\.*[\w.]*[ \t]+import (?:[A-Za-z_]\w*, )*")


def triggers(text: bytes):
    """Every trigger point of ``text``: (index of its byte, whether ``(`` or ``*`` may come
    instead of a name).
    An attribute-access dot (after a name not starting with a digit, ``)`` or ``]``), or the
    space ending ``from m import `` or a ``, `` after names in such a line."""
    for m in re.finditer(rb"(?<=[A-Za-z0-9_)\]])\.", text):
        i = m.start()
        before = re.search(rb"[A-Za-z0-9_\x80-\xff]*\Z", text[:i]).group()
        if not before[:1].isdigit():
            yield i, False
    for m in re.finditer(rb" ", text):
        i = m.start()
        if IMPORT_LINE.fullmatch(text, text.rfind(b"\n", 0, i) + 1, i + 1):
            yield i, True


def reference_ok(names_at, code: bytes, answer: bytes, ended: bool = False) -> bool:
    """Whether ``answer`` (then the end, if ``ended``) may follow ``code``: after every trigger
    point whose name reaches into the answer, a name jedi lists there (or a prefix of one where
    the text ends); trigger points where jedi lists nothing constrain nothing."""
    text = code + answer
    for i, empty_ok in triggers(text):
        name = WORD.match(text, i + 1).group()
        if i + 1 + len(name) < len(code):
            continue  # a name the prompt wrote in full
        names = names_at(text[: i + 1])
        if not names:
            continue
        at_end = i + 1 + len(name) == len(text) and not ended
        if at_end:
            ok = any(n.startswith(name) for n in names.sorted)
        else:
            ok = name in names.whole or (empty_ok and not name and text[i + 1 : i + 2] in (b"(", b"*"))
        if not ok:
            return False
    return True


@torch.inference_mode()
def monitored_greedy(loaded, texts, names_at, code: str, prompt, n: int) -> tuple[list[int], str]:
    """Plain greedy decoding with the reference's mask at every step."""
    code_b, eos = code.encode(), loaded.eos_token_ids
    target = Target(loaded)
    logits = target.prefill(prompt)
    out, answer = [], b""
    while len(out) < n:
        ok = [
            reference_ok(names_at, code_b, answer, ended=True) if t in eos else reference_ok(names_at, code_b, answer + texts[t])
            for t in range(len(texts))
        ]  # fmt: skip
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
        mask[: len(ok)] = torch.tensor(ok)
        token = int(logits.masked_fill(~mask, float("-inf")).argmax())
        out.append(token)
        if token in eos:
            return out, "eos"
        answer += texts[token]
        logits = target.score(token, DraftTree.empty())[0]
        target.commit([])
    return out, "length"


METHODS = ["ar", "pld", "recycling", "aded", "suffix", "hybrid", "lookahead", "sjd"]


def all_decoders(lm):
    yield from ((m, build_decoder(m, lm)) for m in METHODS)
    yield from ((m, build_decoder(m, lm, draft=lm)) for m in ("draft-model", "dyspec"))


def ids(lm, code: str) -> list[int]:
    return lm.tokenizer.encode(code, add_special_tokens=False)


# ---- tests ----------------------------------------------------------------------------------------
IMPORTING = "import os\nfrom shop import "


def test_jedi_names_at_a_dot_and_after_import(oracle):
    assert STORE_NAMES <= set(n.decode() for n in oracle((HEAD + "store.").encode()).sorted)
    assert b"sell_item" not in oracle((HEAD + "store.").encode()).whole
    assert not oracle(b"def f(a):\n    a.")  # a type jedi cannot tell: nothing constrained
    for where in ("# a comment on store.", "x = 'store.", "x = 1."):  # not attribute access
        assert not oracle((HEAD + where).encode()), where
    assert b"Store" in oracle(IMPORTING.encode()).whole  # what the module defines
    assert b"Store" in oracle(b"from shop import Store, ").whole
    assert not oracle(b"# from shop import ")


def test_a_chat_reply_is_read_from_its_last_code_block():
    from specdecode.constraints.monitor import _code_part

    assert _code_part("x = 1\nx.") == "x = 1\nx."  # a raw completion: all of it
    assert _code_part("Sure:\n```python\nimport os\nos.") == "import os\nos."
    assert _code_part("```python\nstore.") == "store."
    assert _code_part("```py\na = 1\n```\nthen\n```python\nb.") == "b."


def test_mask_equals_the_reference_at_every_state(lm, repo, oracle):
    loaded, texts = lm
    c = monitor_constraint(loaded, "python", repo, code=CODE)
    m = c.matcher()
    answers = ["", "re", "restock_from_supplier", "restock_from_supplier(None, {}).", "sell_item_v3(2)\n",
               "stock", "stock.", "stock.ke", "name.up"]  # fmt: skip
    for answer in answers:
        assert m.consume_tokens(ids(loaded, answer)), answer
        mask = m.mask()
        want = [reference_ok(oracle, CODE.encode(), answer.encode() + texts[t]) for t in range(len(texts))]
        want[0] = reference_ok(oracle, CODE.encode(), answer.encode(), ended=True)  # <eos>
        assert mask.tolist() == want, answer
        assert [m.validate_tokens([t]) == 1 for t in range(1, len(texts))] == want[1:], answer
        assert 0 < sum(want) < len(want) or answer.endswith("\n"), answer  # constrained inside a name
        m.rollback(len(ids(loaded, answer)))
    outside = monitor_constraint(loaded, "python", repo, code=HEAD).matcher().mask()
    assert outside.all()  # outside trigger points the mask allows everything
    # "from shop import": a name from shop after a space (" Store" is one token), or ( or *
    for code, answers in (
        ("import os\nfrom shop import", ["", " S", " Store", " Store, ", " Store,", " (", " *", " Store as"]),
    ):
        m = monitor_constraint(loaded, "python", repo, code=code).matcher()
        for answer in answers:
            assert m.consume_tokens(ids(loaded, answer)), answer
            mask = m.mask()
            want = [
                reference_ok(oracle, code.encode(), answer.encode() + texts[t]) for t in range(len(texts))
            ]
            want[0] = reference_ok(oracle, code.encode(), answer.encode(), ended=True)
            assert mask.tolist() == want, answer
            m.rollback(len(ids(loaded, answer)))
        assert m.mask()[ids(loaded, " Store")[0]]
        assert m.consume_tokens(ids(loaded, " "))
        assert not m.mask()[ids(loaded, "x")[0]] and m.mask()[ids(loaded, "Store")[0]]


def test_greedy_equals_monitored_greedy_for_every_drafter(lm, repo, oracle):
    loaded, texts = lm
    prompt = ids(loaded, CODE)
    want, why = monitored_greedy(loaded, texts, oracle, CODE, prompt, 40)
    c = monitor_constraint(loaded, "python", repo, code=CODE)
    for name, decoder in all_decoders(loaded):
        r = decoder.generate_ids(prompt, max_new_tokens=40, constraint=c)
        assert r.token_ids == want, name
        assert r.finish_reason == why, name
    # after the dot: a name jedi lists, whole; unconstrained, this model writes another
    text = loaded.tokenizer.decode(want, skip_special_tokens=True)
    name = WORD.match(text.encode()).group().decode()
    assert name in STORE_NAMES and len(name) < len(text)
    free = build_decoder("ar", loaded).generate_ids(prompt, max_new_tokens=40)
    assert WORD.match(free.text.encode()).group().decode() not in STORE_NAMES


def test_from_import_writes_a_name_the_module_defines(lm, repo, oracle):
    loaded, texts = lm
    prompt = ids(loaded, IMPORTING)
    want, why = monitored_greedy(loaded, texts, oracle, IMPORTING, prompt, 24)
    c = monitor_constraint(loaded, "python", repo, code=IMPORTING)
    for name in ("ar", "pld", "hybrid", "lookahead"):
        r = build_decoder(name, loaded).generate_ids(prompt, max_new_tokens=24, constraint=c)
        assert (r.token_ids, r.finish_reason) == (want, why), name
    text = loaded.tokenizer.decode(want, skip_special_tokens=True).encode()
    assert WORD.match(text).group() in oracle(IMPORTING.encode()).whole or not text[:1].isalnum()


def test_outside_trigger_points_the_output_is_unconstrained(lm, repo, oracle):
    loaded, _ = lm
    code = HEAD + "total = 0\n"
    prompt = ids(loaded, code)
    free = build_decoder("ar", loaded).generate_ids(prompt, max_new_tokens=40)
    # no attribute the monitor knows in the free answer (so it has nothing to change)
    dots = [m.start() for m in re.finditer(rb"(?<=[A-Za-z0-9_)\]])\.", free.text.encode())]
    assert all(not oracle(code.encode() + free.text.encode()[: i + 1]) for i in dots)
    c = monitor_constraint(loaded, "python", repo, code=code)
    for name in ("ar", "hybrid"):
        r = build_decoder(name, loaded).generate_ids(prompt, max_new_tokens=40, constraint=c)
        assert r.token_ids == free.token_ids, name


def test_no_forbidden_token_is_scored(lm, repo, oracle, monkeypatch):
    """Every path of every scored tree is valid (pruned before the forward); pld copies the
    invented ``sell_item(`` from the prompt, so there is something to prune."""
    loaded, texts = lm
    prompt = ids(loaded, CODE)
    c = monitor_constraint(loaded, "python", repo, code=CODE)
    scored, real_score = [], Target.score

    def recording(self, root, tree):
        scored.append(tree)
        return real_score(self, root, tree)

    monkeypatch.setattr(Target, "score", recording)
    pruned = 0
    real_kept = type(c.guide(loaded, SamplingConfig()))._kept

    def counting(self, tokens, parents):
        nonlocal pruned
        kept = real_kept(self, tokens, parents)
        pruned += len(tokens) - len(kept)
        return kept

    monkeypatch.setattr(type(c.guide(loaded, SamplingConfig())), "_kept", counting)
    for name in ("pld", "hybrid", "lookahead"):
        scored.clear()
        steps = list(build_decoder(name, loaded).steps(prompt, SamplingConfig(), 40, constraint=c))
        assert len(scored) == len(steps) - 1
        answer = b""
        for tree, step in zip(scored, steps, strict=False):
            answer += b"".join(texts[t] for t in step.tokens)
            for node in range(len(tree)):
                path = [tree.tokens[i] for i in tree.path_to(node)]
                body = b"".join(texts[t] for t in path if t != 0)
                assert reference_ok(oracle, CODE.encode(), answer + body, ended=path[-1] == 0), name
        assert sum(len(t) for t in scored) > 0, name
    assert pruned > 0


class Inventing(Drafter):
    """Proposes ``tem(`` every step (after ``sell_i``: the start of ``sell_item_v3`` and then
    the invented ``sell_item(``); records the trees it is told about."""

    def __init__(self, tok):
        tokens = tok.encode("tem(", add_special_tokens=False)
        self.tree = DraftTree(tokens, list(range(-1, len(tokens) - 1)))
        self.seen = []

    def propose(self, tokens, max_depth):
        return self.tree if max_depth >= len(self.tree) else DraftTree.empty()

    def observe(self, outcome):
        self.seen.append(outcome.tree)


def test_invented_names_are_cut_and_the_drafter_sees_its_own_tree(lm, repo, oracle):
    loaded, texts = lm
    code = CODE + "sell_"
    prompt = ids(loaded, code)
    want, _ = monitored_greedy(loaded, texts, oracle, code, prompt, 24)
    drafter = Inventing(loaded.tokenizer)
    c = monitor_constraint(loaded, "python", repo, code=code, jump_forward=False)
    steps = list(Decoder("inventing", loaded, drafter).steps(prompt, SamplingConfig(), 24, constraint=c))
    assert [t for s in steps for t in s.tokens] == want
    assert loaded.tokenizer.decode(want).startswith("item_v3")
    # after "sell_i": "tem" is scored and accepted, the "(" of the invented name never scored
    assert (steps[1].drafted, steps[1].accepted) == (3, 3)
    assert steps[2].drafted == 0  # after "sell_item_" the drafted "t" is not a name's: nothing scored
    own = (drafter.tree.tokens, drafter.tree.parents)
    assert len(drafter.seen) == len(steps) - 1  # its own tree, its rows, at every step
    assert all((t.tokens, t.parents) == own for t in drafter.seen if len(t))


def test_jump_forward_drafts_the_rest_of_a_unique_name(lm, repo):
    loaded, _ = lm
    code = HEAD + "store.rest"
    prompt = ids(loaded, code)
    fast = build_decoder("ar", loaded).generate_ids(
        prompt, max_new_tokens=30, constraint=monitor_constraint(loaded, "python", repo, code=code)
    )
    slow = build_decoder("ar", loaded).generate_ids(
        prompt,
        max_new_tokens=30,
        constraint=monitor_constraint(loaded, "python", repo, code=code, jump_forward=False),
    )
    assert fast.token_ids == slow.token_ids
    assert fast.text.startswith("ock_from_supplier") and not fast.text[len("ock_from_supplier")].isalnum()
    assert fast.steps < slow.steps


def test_sampling_writes_only_listed_names(lm, repo, oracle):
    """Under sampling every row is masked too (the locally masked distribution): whatever is
    drawn after the dot is a listed name."""
    loaded, _ = lm
    prompt = ids(loaded, CODE)
    seen = set()
    for seed in range(6):
        c = monitor_constraint(loaded, "python", repo, code=CODE)
        for name in ("ar", "hybrid"):
            cfg = SamplingConfig(temperature=1.0, seed=seed)
            r = build_decoder(name, loaded).generate_ids(
                prompt, max_new_tokens=24, sampling=cfg, constraint=c
            )
            written = WORD.match(r.text.encode()).group().decode()
            ended = len(written) < len(r.text) or r.finish_reason == "eos"  # the name is whole
            assert written.encode() in oracle(CODE.encode()).whole and ended, (name, seed, r.text)
            seen.add(written)
    assert len(seen) > 1  # it samples among the names, not one forced answer


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--monitor", "rust", "--repo", "{repo}"], "unknown monitor language 'rust'"),
        (["--monitor", "python", "--repo", "{missing}"], "does not exist"),
        (["--monitor", "python", "--repo", "{file}"], "is not a folder"),
        (["--monitor", "python"], "needs a repository folder (--repo DIR)"),
        (["--repo", "{repo}"], "give the language too (--monitor python)"),
        (["--monitor", "python", "--repo", "{repo}", "--regex", "a"], "or a monitor, not both"),
    ],
)
def test_cli_bad_monitor_input_is_one_line_before_loading(capsys, repo, tmp_path, monkeypatch, argv, message):
    from specdecode import api
    from specdecode.cli import main

    (tmp_path / "f.py").write_text("x = 1\n")
    monkeypatch.setattr(api, "get_decoder", lambda *a, **k: pytest.fail("loaded a model"))
    paths = {"repo": str(repo), "missing": str(tmp_path / "nope"), "file": str(tmp_path / "f.py")}
    code = main(["generate", "--raw", *[a.format(**paths) for a in argv], "store."])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_api_bad_monitor_input_before_loading(repo, monkeypatch):
    import specdecode
    from specdecode import api

    monkeypatch.setattr(api, "get_decoder", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SpecDecodeError, match="unknown monitor language 'java'"):
        specdecode.generate("x.", monitor="java", repo=str(repo))
    with pytest.raises(SpecDecodeError, match="does not exist"):
        list(specdecode.stream("x.", monitor="python", repo=str(repo / "nope")))
    for call in (specdecode.generate, lambda *a, **k: list(specdecode.stream(*a, **k))):
        with pytest.raises(SpecDecodeError, match="or a monitor, not both"):
            call("x.", monitor="python", repo=str(repo), regex="[a-z]+")


# ---- the default model ----------------------------------------------------------------------------
LEDGER = """\
class Ledger:
    def __init__(self, owner):
        self.owner = owner
        self.entries = []

    def post_entry_v2(self, amount, memo=""):
        self.entries.append((amount, memo))
        return len(self.entries)

    def reconcile_month(self, month):
        return sum(a for a, _ in self.entries)
"""


@torch.inference_mode()
def library_masked_greedy(loaded, constraint, prompt, n):
    """Greedy decoding with the monitor's own mask at every step, one token per forward."""
    m, eos = constraint.matcher(), loaded.eos_token_ids
    target = Target(loaded)
    logits = target.prefill(prompt)
    out = []
    while len(out) < n:
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
        allowed = m.mask()
        mask[: allowed.shape[0]] = allowed[: mask.shape[0]]
        token = int(logits.masked_fill(~mask, float("-inf")).argmax())
        out.append(token)
        if token in eos:
            break
        assert m.consume_token(token)
        logits = target.score(token, DraftTree.empty())[0]
        target.commit([])
    return out


@pytest.mark.real_model
def test_real_model_greedy_equals_masked_greedy_and_names_exist(default_model, tmp_path):
    (tmp_path / "ledger.py").write_text(LEDGER)
    code = "from ledger import Ledger\n\nbook = Ledger('ann')\nbook.post_entry(5)\nbook."
    c = monitor_constraint(default_model, "python", tmp_path, code=code)
    prompt = default_model.tokenizer.encode(code)
    want = library_masked_greedy(default_model, c, prompt, 16)
    for name in ("ar", "pld", "suffix", "hybrid"):
        r = build_decoder(name, default_model).generate_ids(prompt, max_new_tokens=16, constraint=c)
        assert r.token_ids == want, name
    text = default_model.tokenizer.decode(want)
    assert WORD.match(text.encode()).group().decode() in {
        "owner",
        "entries",
        "post_entry_v2",
        "reconcile_month",
    }
