"""The SpecDec++ stop head (``stop_head=online``) as an option of kangaroo, draft-model and the
head methods (medusa, hydra, clover): lossless (greedy = ar, chi-square at temperature 1), it
really decides the draft length (a tiny threshold drafts one token, a head that predicts
acceptance 1 drafts to the limit), it learns from the verifier's outcome on the tokens it
judged, and a combination it cannot serve (draft-model with k drafts) is refused in one line.
"""

import pytest
import torch

import drafting
from drafting import PROMPTS
from specdecode.drafters._stop import AcceptanceHead, StopWalk
from specdecode.engine import build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.lossless import PrefixCells, model_next_probs
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.training.kangaroo import KangarooSettings, train_adapter
from specdecode.training.train import TrainSettings, train_heads

pytestmark = pytest.mark.usefixtures("private_cache")

TRAIN_PROMPTS = [[(7 * i + j) % 60 + 2 for j in range(6)] for i in range(12)]
ONLINE = {"stop_head": "online"}


@pytest.fixture(scope="module")
def lm():
    """A tiny peaked model with 3 layers (kangaroo's adapter sits on the first)."""
    return tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3, num_hidden_layers=3)


@pytest.fixture(scope="module")
def files(lm, tmp_path_factory):
    """A kangaroo adapter and medusa heads for ``lm``, trained for a few steps: method -> path."""
    folder = tmp_path_factory.mktemp("stop")
    kangaroo = KangarooSettings(exit_layer=1, steps=30, batch=64, seqs=4, lr=1e-2, max_new_tokens=30)
    medusa = TrainSettings("medusa", num_heads=3, steps=30, batch=32, lr=1e-2, max_new_tokens=30)
    return {
        "kangaroo": train_adapter(
            lm, kangaroo, folder / "k.safetensors", prompts=TRAIN_PROMPTS, progress=False
        ).path,
        "medusa": train_heads(
            lm, medusa, folder / "m.safetensors", prompts=TRAIN_PROMPTS, progress=False
        ).path,
    }


def setup(method, lm, files, **options):
    """``(options, draft model)`` for ``method`` on ``lm``; draft-model's draft is the target
    itself (its drafts are accepted, so the head learns to draft long chains)."""
    if method == "draft-model":
        return {"max_draft": 4} | options, lm
    return {"heads": str(files[method])} | options, None


def spy(decoder):
    """Record ``(tree, max_depth)`` of every proposal."""
    seen = []
    propose = decoder.drafter.propose

    def wrapped(tokens, max_depth, **kw):
        tree = propose(tokens, max_depth, **kw)
        seen.append((tree, max_depth))
        return tree

    decoder.drafter.propose = wrapped
    return seen


def run(method, lm, files, prompts=PROMPTS + TRAIN_PROMPTS[:2], **options):
    """Greedy output equals ar's on every prompt; the decoder and every ``(tree, max_depth)``."""
    options, draft = setup(method, lm, files, **options)
    ar = build_decoder("ar", lm)
    decoder = build_decoder(method, lm, draft=draft, options=options)
    seen = spy(decoder)
    for prompt in prompts:
        got = decoder.generate_ids(prompt, max_new_tokens=30)
        assert got.token_ids == ar.generate_ids(prompt, max_new_tokens=30).token_ids
    return decoder, seen


def depth(tree) -> int:
    return max(tree.depths()) if len(tree) else 0


# kangaroo and draft-model draft chains (max_draft 6 and 4); medusa a top-1 chain of its 3 heads
CHAINS = [("kangaroo", {}, 6), ("draft-model", {}, 4), ("medusa", {"top_k": 1, "budget": 3}, 3)]


@pytest.mark.parametrize(("method", "options", "limit"), CHAINS)
def test_greedy_equals_ar_and_the_head_learns(lm, files, method, options, limit):
    # a high stop_threshold: the tiny model's heads are seldom confident past depth 1
    decoder, seen = run(method, lm, files, **options, **ONLINE, stop_threshold=0.99)
    head = decoder.drafter.head
    assert isinstance(head, AcceptanceHead) and decoder.drafter.fork().head is head  # shared
    assert not torch.equal(head.w, AcceptanceHead().w)  # it learned from the verifications
    assert all(depth(t) >= 1 for t, _ in seen)  # the first token is always drafted
    assert sum(len(t) for t, _ in seen) > len(seen)  # and more, some of the time


@pytest.mark.parametrize(("method", "options", "limit"), CHAINS)
def test_a_tiny_threshold_drafts_one_token(lm, files, method, options, limit):
    _, seen = run(method, lm, files, **options, **ONLINE, stop_threshold=1e-9)
    assert [depth(t) for t, _ in seen] == [1] * len(seen)


@pytest.mark.parametrize(("method", "options", "limit"), CHAINS)
def test_a_head_that_predicts_acceptance_drafts_to_the_limit(lm, files, method, options, limit, monkeypatch):
    def certain(self, lr=0.0):  # P(accepted) = sigmoid(60) for every token; never updated
        self.w = torch.tensor([60.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        self.lr = lr

    monkeypatch.setattr(AcceptanceHead, "__init__", certain)
    if method != "medusa":  # a confidence threshold that would stop most drafts early (see below)
        options = options | {"threshold": 0.99}
    _, seen = run(method, lm, files, **options, **ONLINE, stop_threshold=0.01)
    assert [depth(t) for t, _ in seen] == [min(limit, d) for _, d in seen]


def test_without_the_head_the_confidence_threshold_stops_instead(lm, files):
    """The contrast to the test above: the same high threshold with stop_head=none stops kangaroo."""
    _, seen = run("kangaroo", lm, files, threshold=0.99)
    assert sum(len(t) for t, _ in seen) < sum(min(6, d) for _, d in seen) // 2


@pytest.mark.parametrize("top_k", [1, 3])
def test_medusa_learns_from_the_top1_path_up_to_the_first_rejection(lm, files, top_k, monkeypatch):
    """Each step the head is updated with the top-1 path's features from depth 1 to the first
    rejected node (or to the tree's end), labelled by whether the verifier accepted each."""
    options, _ = setup("medusa", lm, files, top_k=top_k, budget=8, **ONLINE)
    decoder = build_decoder("medusa", lm, options=options)
    drafter = decoder.drafter
    calls, expected = [], []
    update = AcceptanceHead.update

    def recording(self, xs, accepted):
        calls.append((len(xs), accepted))
        update(self, xs, accepted)

    monkeypatch.setattr(AcceptanceHead, "update", recording)
    observe = drafter.observe

    def checking(outcome):
        tree, path = outcome.tree, outcome.verdict.path
        node, labels = -1, []  # walk the top-1 path: each node's first (likeliest) child
        while True:
            below = [c for c in tree.children(node) if drafter._proposed[c][1]]
            if not below:
                break
            node = below[0]
            assert drafter._proposed[node][1] == len(labels) + 1  # its depth
            labels.append(node in path)
            if not labels[-1]:
                break
        expected.append((len(labels), sum(labels)))
        observe(outcome)

    drafter.observe = checking
    for prompt in PROMPTS:
        decoder.generate_ids(prompt, max_new_tokens=30)
    assert calls == expected and len(calls) > 20
    assert any(n > a for n, a in calls) and any(a > 0 for _, a in calls)  # rejections and acceptances


@pytest.mark.parametrize("method", ["hydra", "clover"])
def test_level_methods_cap_their_depth(lm, tmp_path, method):
    settings = TrainSettings(method, num_heads=3, steps=10, batch=32, lr=1e-2, max_new_tokens=20)
    path = train_heads(lm, settings, tmp_path / "h.safetensors", prompts=TRAIN_PROMPTS, progress=False).path
    options = {"heads": str(path), "budget": 8, **ONLINE}
    _, trees, _ = drafting.check_equals_ar(
        lm, method, options | {"stop_threshold": 1e-9}, prompts=PROMPTS[:2]
    )
    assert all(depth(t) == 1 for t in trees)
    decoder, trees, _ = drafting.check_equals_ar(
        lm, method, options | {"stop_threshold": 0.999}, prompts=PROMPTS[:2]
    )
    assert max(depth(t) for t in trees) >= 2
    assert not torch.equal(decoder.drafter.head.w, AcceptanceHead().w)  # it learned along the path


def test_the_walk_keeps_the_first_token_then_stops_past_the_threshold():
    head = AcceptanceHead()  # P(accepted) = confidence, untrained
    q = torch.tensor([0.6, 0.4])
    walk = StopWalk(head, 0.7)
    # alive: 0.6, 0.36, 0.216 -> P(some rejection) 0.4, 0.64, 0.784 > 0.7 at the third
    assert [walk.keep(q) for _ in range(3)] == [True, True, False] and len(walk.features) == 2
    walk = StopWalk(head, 0.01)
    assert [walk.keep(torch.tensor([0.5, 0.5])) for _ in range(2)] == [True, False]  # the first, always


@pytest.mark.parametrize("method", ["kangaroo", "draft-model", "medusa"])
def test_sampling_is_lossless(tmp_path, method):
    lm = tiny_model_for_tests(
        vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3, num_hidden_layers=2
    )
    prompts = [[(3 * i + j) % 8 for j in range(4)] for i in range(8)]
    draft = None
    if method == "kangaroo":
        settings = KangarooSettings(exit_layer=1, steps=20, batch=64, seqs=4, lr=1e-2, max_new_tokens=30)
        path = train_adapter(lm, settings, tmp_path / "k.safetensors", prompts=prompts, progress=False).path
        options, limit = {"heads": str(path), "max_draft": 3}, 3
    elif method == "medusa":
        settings = TrainSettings(method, num_heads=2, steps=20, batch=32, lr=1e-2, max_new_tokens=30)
        path = train_heads(lm, settings, tmp_path / "h.safetensors", prompts=prompts, progress=False).path
        options, limit = {"heads": str(path), "budget": 4}, 2
    else:
        draft = lm  # the target as its own draft: accepted often enough that drafts grow
        options, limit = {"max_draft": 3}, 3
    decoder = build_decoder(method, lm, draft=draft, options=options | ONLINE | {"stop_threshold": 0.3})
    seen = spy(decoder)
    # six new tokens, so that drafts may run 3 deep; the first four against the target's joint
    prompt, cfg = [3, 5, 3, 5, 3], SamplingConfig(temperature=1.0)
    outcomes = [
        decoder.generate_ids(
            prompt, max_new_tokens=6, sampling=SamplingConfig(temperature=1.0, seed=s, coupling="residual")
        ).token_ids
        for s in range(600)
    ]
    assert any(depth(t) < min(limit, d) for t, d in seen)  # the stop head stopped some drafts short
    assert any(depth(t) >= 2 for t, _ in seen)  # and let others run
    _, _, p = PrefixCells(model_next_probs(lm, prompt, cfg), n=len(outcomes), depth=4).test(outcomes)
    assert p > 1e-3


def test_draft_model_refuses_the_head_with_several_drafts(lm):
    with pytest.raises(SpecDecodeError) as err:
        build_decoder("draft-model", lm, draft=lm, options={"drafts": 3, **ONLINE})
    message = str(err.value)
    assert "\n" not in message and "stop_head=online" in message and "drafts=3" in message
    build_decoder("draft-model", lm, draft=lm, options={"drafts": 3})  # each alone is fine


@pytest.mark.parametrize("method", ["kangaroo", "draft-model", "medusa", "hydra", "clover", "swift"])
def test_bad_values_are_refused(lm, method):
    draft = lm if method == "draft-model" else None
    for options, words in (
        ({"stop_head": "offline"}, "one of none, online"),
        ({"stop_threshold": 0}, r"in \(0"),
    ):
        with pytest.raises(SpecDecodeError, match=words):
            build_decoder(method, lm, draft=draft, options=options)
