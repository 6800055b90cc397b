"""Tiny models built in code, for tests: no files, no network, milliseconds to build.

The tokenizer is a word-level one over the tokens ``"t0" .. "t{V-1}"`` (id ``i`` is ``"t{i}"``),
split on whitespace: ``encode_prompt("t3 t5", raw=True) == [3, 5]`` and
``tokenizer.decode([3, 5]) == "t3 t5"``. Unknown words encode as ``t1`` (the unk token).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from specdecode.models.loader import LoadedModel
from specdecode.models.quiet import quiet_transformers

__all__ = ["tiny_model_for_tests", "tiny_tokenizer"]


def tiny_tokenizer(vocab_size: int = 96, eos_token_id: int | None = 0, chat_template: str | None = None):
    """A ``PreTrainedTokenizerFast`` over ``t0 .. t{vocab_size-1}``; ``t{eos_token_id}`` is EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 4:
        raise ValueError("vocab_size must be at least 4")
    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t1"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special: dict[str, str] = {"unk_token": "t1"}
    if eos_token_id is not None:
        special["eos_token"] = f"t{eos_token_id}"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_model_for_tests(
    vocab_size: int = 96,
    seed: int = 0,
    *,
    eos_token_id: int | None = 0,
    chat_template: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **config_overrides: Any,
) -> LoadedModel:
    """A random tiny Llama (2 layers, hidden 32, 4 heads, 2 KV heads) with :func:`tiny_tokenizer`.

    Same arguments, same weights: the seed is applied in a forked RNG, so building one does
    not disturb the caller's random state. ``config_overrides`` go to ``LlamaConfig``
    (e.g. ``num_hidden_layers=4``, ``initializer_range=0.5`` for peakier distributions).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    settings: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
    }
    settings.update(config_overrides)
    config = LlamaConfig(**settings)
    with quiet_transformers(progress=False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_token_id, bos_token_id=None, pad_token_id=None
    )
    device = torch.device(device)
    model.to(device=device, dtype=dtype)
    model.eval()
    tokenizer = tiny_tokenizer(vocab_size, eos_token_id, chat_template)
    described = json.dumps(
        {"seed": seed, "chat_template": chat_template, **settings}, sort_keys=True, default=str
    )
    key = "tiny-" + hashlib.sha256(described.encode()).hexdigest()[:16]
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=f"tiny-llama-v{vocab_size}-s{seed}",
        source=f"tiny_model_for_tests(vocab_size={vocab_size}, seed={seed})",
        device=device,
        dtype=dtype,
        key=key,
    )
