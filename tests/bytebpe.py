"""A GPT-2-style byte-level BPE tokenizer for tests: 256 byte tokens (ids 1..256), the given
merges after them, ``<eos>`` = 0. Grammar and monitor tests need a tokenizer whose tokens are
bytes (llguidance reads it), small enough for a tiny model."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def byte_bpe(
    merges: list[tuple[str, str]], eos: bool = True
) -> tuple[PreTrainedTokenizerFast, dict[str, int], dict[str, int]]:
    """``(tokenizer, vocab, byte_of)``: ``vocab`` maps each token's string to its id,
    ``byte_of`` each byte-level symbol to its byte."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbol, extra = {}, 0
    for b in range(256):
        symbol[b] = chr(b) if b in keep else chr(256 + extra)
        extra += b not in keep
    vocab = {"<eos>": 0}
    for b in range(256):
        vocab[symbol[b]] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **({"eos_token": "<eos>"} if eos else {}))
    return tok, vocab, {s: b for b, s in symbol.items()}
