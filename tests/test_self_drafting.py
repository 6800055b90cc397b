"""Drafting from the target itself: swift (layer skipping) and medusa / hydra (draft heads).

Lossless through the shared verifier (greedy = ar, chi-square at temperature 1), and the parts
that make them draft well: the hidden state the heads read is the one that gave the root, and
swift's mirror of the target's KV is exact (a skipped identity layer makes every draft right).
"""

import pytest
import torch

from drafting import PROMPTS, check_equals_ar, spy
from lossless import chi_square_pvalue, exact_joint, sample_joint
from specdecode.drafters.base import Drafter
from specdecode.engine import Decoder, build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.models.testing import tiny_model_for_tests
from specdecode.sampling import SamplingConfig
from specdecode.training.train import TrainSettings, train_heads
from specdecode.tree import DraftTree

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def four_layers():
    """A tiny peaked model with 4 layers (layer skipping needs some to skip)."""
    return tiny_model_for_tests(vocab_size=64, seed=3, initializer_range=0.3, num_hidden_layers=4)


def identity_layer(lm, layer: int):
    """Make decoder layer ``layer`` an identity (its attention and MLP write nothing back)."""
    block = lm.model.model.layers[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    return lm


# ---- swift -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"skip": "1", "threshold": 0, "adapt": 0},
        {"skip": "1,2", "threshold": 0, "adapt": 0, "max_draft": 3},
        {"candidates": "0.25,0.5", "trial_steps": 2, "threshold": 0, "adapt": 0},
        {},
    ],
)
def test_swift_greedy_equals_ar(four_layers, options):
    decoder, trees, _ = check_equals_ar(four_layers, "swift", options)
    if options.get("threshold") == 0:  # drafting never stops early: every step drafts
        assert sum(len(t) for t in trees) >= len(trees)


def test_swift_skipping_an_identity_layer_drafts_exactly():
    """Layer 2 does nothing, so the other layers over the target's own KV rows give the target's
    logits: every draft is accepted (a mirror out of step with the target would break this), and
    the influence ranking finds layer 2."""
    lm = identity_layer(tiny_model_for_tests(vocab_size=64, seed=4, num_hidden_layers=4), 2)
    decoder, trees, results = check_equals_ar(
        lm,
        "swift",
        {"candidates": "0.25", "threshold": 0, "adapt": 0, "max_draft": 4},
        prompts=PROMPTS[:2],
        tokens=41,
    )
    search = decoder.drafter.search
    assert [sorted(a) for a in search.arms] == [[2]]
    assert min(range(1, 3), key=lambda i: search.influence[i]) == 2
    for r in results:
        assert r.accepted_lengths[:-1] == [5] * (len(r.accepted_lengths) - 1)


def test_swift_specdec_stop_head_is_lossless_and_learns_acceptance(four_layers):
    check_equals_ar(four_layers, "swift", {"skip": "1", "stop_head": "online", "stop_threshold": 0.9})
    # every draft of a skipped identity layer is accepted: the predictor learns to trust them
    lm = identity_layer(tiny_model_for_tests(vocab_size=64, seed=4, num_hidden_layers=4), 2)
    decoder, trees, results = check_equals_ar(
        lm, "swift", {"skip": "2", "stop_head": "online", "stop_threshold": 0.9}, prompts=PROMPTS[:2]
    )
    head = decoder.drafter.head
    q = torch.full((64,), 0.5 / 63)
    q[0] = 0.5  # a draft token of confidence 0.5 at depth 1: the untrained head says 0.5
    assert head.prob(head.features(q, 1)) > 0.6
    assert max(len(t) for t in trees) >= 2 and all(r.mean_accepted > 1.5 for r in results)


def test_swift_search_keeps_the_fastest_candidate(four_layers):
    decoder = build_decoder("swift", four_layers, options={"candidates": "0,0.25,0.5", "trial_steps": 3})
    search = decoder.drafter.search
    decoder.generate_ids(PROMPTS[0], max_new_tokens=40)
    assert search.best is not None
    rates = search.chosen_from
    assert search.best == max(range(len(rates)), key=rates.__getitem__)
    assert search.summary()[search.best]["chosen"]
    # from then on only the chosen candidate runs
    others = [s for i, s in enumerate(search.steps) if i != search.best]
    assert others == [3] * (len(search.steps) - 1) and search.steps[search.best] > 3


def test_swift_sampling_is_lossless():
    lm = tiny_model_for_tests(
        vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3, num_hidden_layers=3
    )
    prompt = [3, 5, 3, 5, 3]
    cfg = SamplingConfig(temperature=1.0)
    decoder = build_decoder("swift", lm, options={"skip": "1", "threshold": 0, "adapt": 0, "max_draft": 3})
    trees = spy(decoder)
    counts = sample_joint(decoder, prompt, cfg, 2000)
    assert sum(len(t) for t in trees) >= 2000 and all(t.draft_probs is not None for t in trees if len(t))
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"skip": "9"}, "layers 0..3"),
        ({"skip": "a,b"}, "layer indices"),
        ({"candidates": "0.5,2"}, "fractions"),
    ],
)
def test_swift_bad_options(four_layers, options, message):
    with pytest.raises(SpecDecodeError, match=message):
        build_decoder("swift", four_layers, options=options)


def test_a_backend_without_hidden_states_is_refused(four_layers, monkeypatch):
    monkeypatch.setattr(type(four_layers), "backend", "llama.cpp", raising=False)
    for method in ("swift", "medusa"):
        with pytest.raises(SpecDecodeError, match="llama.cpp backend does not expose"):
            build_decoder(method, four_layers)


# ---- the hidden-state hook ---------------------------------------------------------------------
class _HiddenProbe(Drafter):
    """Checks, at each proposal, that the hidden state read is the one whose logits gave the root."""

    reads_target = frozenset({"hidden"})

    def __init__(self, lm) -> None:
        self.lm = lm
        self.checked = 0

    def attach(self, reader) -> None:
        self.reader = reader

    def propose(self, tokens, max_depth):
        logits = self.lm.model.lm_head(self.reader.hidden)
        assert int(logits.argmax()) == tokens[-1]  # greedy: the root is that row's argmax
        self.checked += 1
        # a 2-token draft repeating the text's last tokens: accepted paths vary in length
        return DraftTree.chain([tokens[-2], tokens[-1]][:max_depth])


def test_hidden_state_hook_gives_the_roots_row(peaky):
    probe = _HiddenProbe(peaky)
    decoder = Decoder("probe", peaky, probe)
    for prompt in PROMPTS:
        decoder.generate_ids(prompt, max_new_tokens=30)
    assert probe.checked > 30


# ---- medusa / hydra ------------------------------------------------------------------------------
HEAD_PROMPTS = [[(7 * i + j) % 60 + 2 for j in range(6)] for i in range(12)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, peaky):
    """medusa, hydra and clover heads for ``peaky`` trained for a few steps: method -> file."""
    folder = tmp_path_factory.mktemp("heads")
    paths = {}
    for method in ("medusa", "hydra", "clover"):
        settings = TrainSettings(method, num_heads=3, steps=40, batch=32, lr=1e-2, max_new_tokens=40)
        paths[method] = train_heads(
            peaky, settings, folder / f"{method}.safetensors", prompts=HEAD_PROMPTS, progress=False
        ).path
    return paths


@pytest.mark.parametrize("method", ["medusa", "hydra", "clover"])
@pytest.mark.parametrize("budget", [0, 6])
def test_heads_greedy_equal_ar(peaky, trained, method, budget):
    options = {"heads": str(trained[method]), "budget": budget}
    _, trees, results = check_equals_ar(peaky, method, options, prompts=PROMPTS + HEAD_PROMPTS[:3])
    assert any(len(t) and not t.is_chain for t in trees)  # token trees
    assert max(r.mean_accepted for r in results) > 1.05  # drafts are accepted
    if budget:
        assert max(len(t) for t in trees) == budget


@pytest.mark.parametrize("method", ["medusa", "hydra", "clover"])
def test_heads_sampling_is_lossless(tmp_path, method):
    lm = tiny_model_for_tests(vocab_size=8, seed=1, eos_token_id=None, initializer_range=0.3)
    settings = TrainSettings(method, num_heads=2, steps=30, batch=32, lr=1e-2, max_new_tokens=30)
    prompts = [[(3 * i + j) % 8 for j in range(4)] for i in range(8)]
    path = train_heads(lm, settings, tmp_path / "h.safetensors", prompts=prompts, progress=False).path
    decoder = build_decoder(method, lm, options={"heads": str(path), "budget": 4})
    trees = spy(decoder)
    prompt = [3, 5, 3, 5, 3]
    cfg = SamplingConfig(temperature=1.0)
    # deterministic drafts (the verifier's one-hot case, tested at length in test_verify): fewer samples
    counts = sample_joint(decoder, prompt, cfg, 1000)
    assert sum(len(t) for t in trees) > 1000 and any(not t.is_chain for t in trees if len(t))
    assert chi_square_pvalue(counts, exact_joint(lm, prompt, cfg)) > 1e-3


def test_heads_missing_file_is_one_clear_error(peaky, tmp_path):
    with pytest.raises(SpecDecodeError, match="no trained heads.*specdecode train medusa"):
        build_decoder("medusa", peaky, options={"heads": str(tmp_path / "none.safetensors")})
    with pytest.raises(SpecDecodeError, match="no trained heads"):
        build_decoder("hydra", peaky)  # nothing at the default location in this test's cache


def test_a_draft_vocabulary_restricts_the_drafts(peaky, trained):
    """``draft_vocab=N``: only the N tokens with the most label mass in the training text are
    drafted (the ranking is saved with the heads); the output is still ar's."""
    decoder, trees, _ = check_equals_ar(peaky, "medusa", {"heads": str(trained["medusa"]), "draft_vocab": 5})
    allowed = set(decoder.drafter.heads.vocab_rank[:5].tolist())
    assert len(decoder.drafter.heads.vocab_rank) > 5
    assert {t for tree in trees for t in tree.tokens} <= allowed
    assert sum(len(t) for t in trees) > 0


@pytest.mark.real_model
def test_real_model_swift_equals_ar(default_model):
    ids = default_model.encode_prompt("Explain how a refrigerator keeps food cold.")
    want = build_decoder("ar", default_model).generate_ids(ids, max_new_tokens=40).token_ids
    options = {"skip": "4,5,6,12,13,14,15,17", "threshold": 0.3}
    got = build_decoder("swift", default_model, options=options).generate_ids(ids, max_new_tokens=40)
    assert got.token_ids == want
    assert got.drafted > 0 and got.mean_accepted > 1.0
