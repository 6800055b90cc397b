"""The llama.cpp backend (``--backend llama.cpp``): tree scoring in one batch against each path
decoded alone, the KV cache after partial acceptance, greedy identity with llama.cpp's own
greedy decoding for the train-free drafters, and the float GGUF copies.

The model is a tiny random Llama built in code (``specdecode.models.testing``), written as an
F32 GGUF with the ``gguf`` package's writer (the same tensor layout llama.cpp's converter
writes), and run by llama.cpp with one thread.
"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="the llamacpp extra: pip install -e '.[llamacpp]'")

from specdecode.backends.gguf_float import float_gguf, write_float_gguf  # noqa: E402
from specdecode.backends.llamacpp import LlamaCppModel  # noqa: E402
from specdecode.backends.llamacpp_baselines import LlamaCppBaseline  # noqa: E402
from specdecode.engine import build_decoder  # noqa: E402
from specdecode.errors import SpecDecodeError  # noqa: E402
from specdecode.sampling import SamplingConfig  # noqa: E402
from specdecode.tree import DraftTree  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")

VOCAB = 64


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Q/K rows from transformers' rotate-half RoPE layout to llama.cpp's interleaved pairs, as
    llama.cpp's convert_hf_to_gguf.py does for Llama."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(loaded, path, qtype: str = "F32") -> None:
    """Write a tiny transformers Llama as a GGUF llama.cpp runs (tensors F32, or Q8_0 for the
    2-D ones), with a vocabulary of its ``t0 .. tN`` words."""
    import gguf

    model, cfg = loaded.model, loaded.model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0 if qtype == "F32" else 7)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    w.add_token_scores([0.0] * cfg.vocab_size)
    w.add_token_types([1] * cfg.vocab_size)
    w.add_eos_token_id(0)
    w.add_unk_token_id(1)
    w.add_add_bos_token(False)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    per_layer = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        t = sd[hf]
        if gg.endswith("attn_q.weight"):
            t = _permute(t, heads)
        elif gg.endswith("attn_k.weight"):
            t = _permute(t, kv_heads)
        if t.ndim == 2 and qtype == "Q8_0":
            w.add_tensor(
                gg,
                gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            w.add_tensor(gg, np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny():
    """The transformers tiny model (peaked distributions: drafts get accepted)."""
    from specdecode.models.testing import tiny_model_for_tests

    return tiny_model_for_tests(vocab_size=VOCAB, seed=3, initializer_range=0.3, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def gguf_path(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    write_tiny_gguf(tiny, path)
    return path


def _open(path, tokenizer, **kw):
    return LlamaCppModel.open(
        path, tokenizer=tokenizer, name="tiny", source=str(path), key="tiny", n_threads=1, **kw
    )


@pytest.fixture(scope="module")
def llama(gguf_path, tiny):
    return _open(gguf_path, tiny.tokenizer)


def _alone(llama, ids: list[int]) -> torch.Tensor:
    """The logits after ``ids``, decoded from an empty cache in one prefill."""
    t = llama.new_target()
    try:
        return t.prefill(ids)
    finally:
        t.close()


PROMPT = [5, 9, 13, 5, 9, 22, 31, 7, 5, 9, 13, 40]


def _tree() -> DraftTree:
    # root -> a(0) -> b(1) -> c(2);  root -> d(3) -> e(4), f(5) -> g(6);  a -> h(7)
    return DraftTree(tokens=[11, 12, 13, 21, 22, 23, 24, 15], parents=[-1, 0, 1, -1, 3, 3, 5, 0])


def _path(tree: DraftTree, i: int) -> list[int]:
    out = []
    while i >= 0:
        out.append(i)
        i = tree.parents[i]
    return out[::-1]


def test_the_gguf_is_the_transformers_model(llama, tiny):
    """The written GGUF run by llama.cpp gives transformers' logits (its KV cache is f16)."""
    ids = PROMPT
    want = tiny.model(torch.tensor([ids])).logits[0, -1].float()
    got = _alone(llama, ids)
    assert got.shape == want.shape == (VOCAB,)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=0)
    assert int(got.argmax()) == int(want.argmax())


def test_tree_scoring_matches_each_path_alone(llama):
    tree = _tree()
    target = llama.new_target()
    target.prefill(PROMPT)
    root = 3
    logits = target.score(root, tree)  # [n + 1, vocab]
    assert logits.shape == (len(tree) + 1, VOCAB)
    torch.testing.assert_close(logits[0], _alone(llama, [*PROMPT, root]), atol=1e-4, rtol=0)
    for i in range(len(tree)):
        path = [tree.tokens[j] for j in _path(tree, i)]
        torch.testing.assert_close(logits[i + 1], _alone(llama, [*PROMPT, root, *path]), atol=1e-4, rtol=0)
    target.commit([])
    target.close()


def test_commit_after_partial_acceptance_then_continue(llama):
    """Accept a path that is not a prefix of the node order (d -> f, of d's subtree), then score
    more trees on top: every row equals decoding the committed text alone."""
    tree = _tree()
    target = llama.new_target()
    target.prefill(PROMPT)
    text = [*PROMPT, 3]
    target.score(text[-1], tree)
    target.commit([3, 5])  # d, f accepted (g and the rest dropped)
    assert target.length == len(text) + 2
    text += [tree.tokens[3], tree.tokens[5], 30]  # ..., d, f, then the bonus token as the next root
    # a wider tree next (more leaves: new sequences join), then a chain, then an empty tree
    wide = DraftTree(tokens=[1, 2, 3, 4, 5, 6], parents=[-1, -1, -1, -1, 0, 0])
    logits = target.score(text[-1], wide)
    for i in range(len(wide)):
        path = [wide.tokens[j] for j in _path(wide, i)]
        torch.testing.assert_close(logits[i + 1], _alone(llama, [*text, *path]), atol=1e-4, rtol=0)
    target.commit([0, 5])
    text += [wide.tokens[0], wide.tokens[5], 17]
    chain = DraftTree.chain([8, 9, 10])
    logits = target.score(text[-1], chain)
    torch.testing.assert_close(logits[3], _alone(llama, [*text, 8, 9, 10]), atol=1e-4, rtol=0)
    target.commit([0])
    text += [8, 44]
    logits = target.score(text[-1], DraftTree.empty())
    torch.testing.assert_close(logits[0], _alone(llama, text), atol=1e-4, rtol=0)
    target.commit([])
    assert target.length == len(text)
    target.crop(len(PROMPT))  # back to the prompt: the cache forgets the rest
    logits = target.score(99 % VOCAB, DraftTree.empty())
    torch.testing.assert_close(logits[0], _alone(llama, [*PROMPT, 99 % VOCAB]), atol=1e-4, rtol=0)
    target.commit([])
    target.close()


TRAIN_FREE = ["ar", "pld", "recycling", "aded", "hybrid", "suffix", "lookahead", "sjd"]


@pytest.fixture(scope="module")
def llama_greedy(llama):
    """llama.cpp's own greedy decoding (llama-cpp-python's Llama.generate) of the same file."""
    return LlamaCppBaseline("llama-ar", llama)


@pytest.mark.parametrize("method", TRAIN_FREE)
def test_greedy_identical_to_llama_cpp_greedy(llama, llama_greedy, method):
    prompts = [PROMPT, [7, 7, 3, 12, 7, 7, 3, 12, 7, 7], [40, 41, 42, 43]]
    decoder = build_decoder(method, llama)
    drafted = 0
    for ids in prompts:
        want = llama_greedy.generate_ids(ids, max_new_tokens=40, sampling=SamplingConfig()).token_ids
        got = decoder.generate_ids(ids, max_new_tokens=40)
        assert got.token_ids == want, f"{method} on {ids}"
        drafted += got.drafted
    if method != "ar":
        assert drafted > 0  # the drafter did propose trees: the backend scored them


def test_llama_pld_baseline_counts_its_forwards(llama, llama_greedy):
    pld = LlamaCppBaseline("llama-pld", llama, prompt_lookup={"num_pred_tokens": 10, "max_ngram_size": 2})
    ids = [7, 7, 3, 12, 7, 7, 3, 12, 7, 7]
    out = pld.generate_ids(ids, max_new_tokens=40, sampling=SamplingConfig())
    plain = llama_greedy.generate_ids(ids, max_new_tokens=40, sampling=SamplingConfig())
    assert out.token_ids == plain.token_ids
    assert plain.accepted_lengths == [1] * (len(plain.token_ids) - 1)
    assert out.accepted_lengths is not None and sum(out.accepted_lengths) == len(out.token_ids) - 1
    with pytest.raises(SpecDecodeError, match="greedy"):
        pld.generate_ids(ids, max_new_tokens=4, sampling=SamplingConfig(temperature=1.0, seed=0))
    # a prompt longer than one llama.cpp batch (512): prefilled in chunks, by both
    long = [(i * 7) % 50 + 3 for i in range(600)]
    want = llama_greedy.generate_ids(long, max_new_tokens=16, sampling=SamplingConfig()).token_ids
    assert pld.generate_ids(long, max_new_tokens=16, sampling=SamplingConfig()).token_ids == want
    assert build_decoder("pld", llama).generate_ids(long, max_new_tokens=16).token_ids == want


def test_sampling_runs_on_the_backend(llama):
    """Sampling goes through the same verifier: same seed, same text, for ar and pld alike
    under the Gumbel coupling (drafter-invariant)."""
    cfg = SamplingConfig(temperature=1.0, seed=5, coupling="gumbel")
    texts = [
        build_decoder(m, llama).generate_ids(PROMPT, max_new_tokens=24, sampling=cfg).token_ids
        for m in ("ar", "pld")
    ]
    assert texts[0] == texts[1] and len(texts[0]) > 0


def test_what_the_backend_cannot_serve_says_so(llama):
    with pytest.raises(SpecDecodeError, match="--backend transformers"):
        llama.model.model.layers  # noqa: B018
    assert not hasattr(llama.model, "lm_head")
    with pytest.raises(SpecDecodeError, match="--backend transformers"):
        llama.model(torch.tensor([[1, 2]]))
    target = llama.new_target()
    with pytest.raises(SpecDecodeError, match="hidden"):
        target.reader(frozenset({"hidden"}))
    target.close()
    with pytest.raises(SpecDecodeError, match="the llama.cpp context holds"):
        _alone(llama, [1] * (llama.n_ctx + 1))
    with pytest.raises(SpecDecodeError, match="unknown backend"):
        from specdecode.models.loader import load_model

        load_model("default", backend="vllm")


def test_folder_and_gpu_refused(tmp_path):
    from specdecode.backends.llamacpp import load_llamacpp

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpecDecodeError, match="runs GGUF files"):
        load_llamacpp(str(tmp_path))
    with pytest.raises(SpecDecodeError, match="CPU"):
        load_llamacpp("default", device="cuda")


def test_float_copies_of_a_quantized_gguf(tiny, tmp_path):
    """A Q8_0 file dequantized to F32 holds exactly gguf's dequantized values; BF16 those
    rounded to nearest; the copy is cached with a marker and written again when damaged."""
    import gguf

    q8 = tmp_path / "tiny-q8.gguf"
    write_tiny_gguf(tiny, q8, "Q8_0")
    src = gguf.GGUFReader(q8)
    want = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in src.tensors}
    for dtype in (torch.float32, torch.bfloat16):
        out = tmp_path / f"out-{dtype}.gguf"
        write_float_gguf(q8, out, dtype)
        r = gguf.GGUFReader(out)
        assert int(r.fields["general.file_type"].contents()) == (0 if dtype == torch.float32 else 32)
        assert r.fields["tokenizer.ggml.tokens"].contents() == src.fields["tokenizer.ggml.tokens"].contents()
        for t in r.tensors:
            got = gguf.quants.dequantize(t.data, t.tensor_type)
            expect = (
                torch.from_numpy(np.array(want[t.name]))
                .to(dtype if t.data.ndim > 1 else torch.float32)
                .float()
                .numpy()
            )
            np.testing.assert_array_equal(got.reshape(expect.shape), expect)
    # through the cache: written once, reused, rewritten after damage; and it runs
    path = float_gguf(q8, "ab" * 32, torch.float32)
    stamp = path.stat().st_mtime_ns
    assert float_gguf(q8, "ab" * 32, torch.float32) == path and path.stat().st_mtime_ns == stamp
    marker = json.loads((path.parent / "specdecode-complete.json").read_text())
    assert marker["source_sha256"] == "ab" * 32 and marker["size"] == path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\xff" * 8)
    again = float_gguf(q8, "ab" * 32, torch.float32)
    assert json.loads((again.parent / "specdecode-complete.json").read_text())["sha256"] == marker["sha256"]
    f32 = _open(again, tiny.tokenizer)
    q = _open(q8, tiny.tokenizer)
    assert (f32.weights, q.weights) == ("F32", "Q8_0")
    # the F32 copy runs the Q8_0 file's weights (llama.cpp multiplies Q8_0 weights with
    # activations rounded to 8 bits, hence the tolerance)
    torch.testing.assert_close(_alone(f32, PROMPT), _alone(q, PROMPT), atol=0.25, rtol=0)


def test_latency_curve_on_the_backend(llama):
    """`specdecode calibrate --backend llama.cpp` measures llama.cpp's own forward: the curve
    is keyed by the backend's model key and is monotone in n and context."""
    from specdecode import cost

    c = cost.calibrate(llama, ns=[1, 2, 4], repeats=1, context_len=16)
    assert c.model_key == llama.key and c.ns == [1, 2, 4]
    assert all(s > 0 for s in c.seconds) and c.seconds == sorted(c.seconds)
    # the model is usable afterwards: greedy decoding still equals llama.cpp's own
    from specdecode.engine import build_decoder

    r = build_decoder("pld", llama).generate_ids(PROMPT, max_new_tokens=8)
    assert r.new_tokens == 8


def test_quantized_file_runs_without_extra_buffer_types(tiny, tmp_path):
    """A Q8_0 file through the backend and through llama.cpp's own greedy decoding, both loaded
    without AMX/repacked weight buffers (llama.cpp's AMX matmul crashes on quantized weights on
    AMX CPUs): the two decode it alike."""
    from specdecode.backends.llamacpp import model_params

    assert model_params().use_extra_bufts is False and model_params().n_gpu_layers == 0
    q8 = tmp_path / "tiny-q8.gguf"
    write_tiny_gguf(tiny, q8, "Q8_0")
    model = _open(q8, tiny.tokenizer)
    plain = LlamaCppBaseline("llama-ar", model)
    want = plain.generate_ids(PROMPT, max_new_tokens=24, sampling=SamplingConfig()).token_ids
    assert build_decoder("ar", model).generate_ids(PROMPT, max_new_tokens=24).token_ids == want
    import llama_cpp.llama_cpp as low

    assert low.llama_model_default_params().use_extra_bufts is True  # the patch was undone
