"""Entropy-adaptive decoding (model switching, as in Simonds, "Entropy Adaptive Decoding:
Dynamic Model Switching for Efficient Inference", 2025): a small model writes while it is
sure, a large model where it is not.

Each token: the small model (``--draft``) predicts the next token; when the entropy of its
distribution (in nats; the mean over the last ``window`` predictions) is at most
``threshold``, its most likely token is taken, else the large model (``--model``, the target)
predicts the token and its most likely one is taken. Both models keep their own KV caches and
read every committed token: the large one catches up on the small one's tokens in one forward
when it is next asked, so a run of small-model tokens costs the large model one forward.

Tokenizers: with the same vocabulary both models read the same token ids. With different ones
the committed text is the common ground (the text bridge of :mod:`specdecode.drafters._bridge`:
each model re-tokenizes the other's text pieces, pieces are cut only where they decode to
whole characters); the result's token ids are the large model's tokenization of that text.

What it preserves: nothing exactly. Where the small model is confident and agrees with the
large one the text is the large model's greedy text; each token the small model takes against
the large model's choice changes the rest. ``threshold=0`` (only tokens the small model is
certain of) comes closest to the large model's greedy output; ``threshold=inf`` is the small
model alone. Greedy only.
"""

from __future__ import annotations

from collections import deque
from typing import Annotated

import torch

from specdecode.drafters._bridge import check_bridge, same_vocabulary
from specdecode.kvcache import kv_cache
from specdecode.registry import at_least
from specdecode.strategies import Strategy, StrategyOutput, register_strategy


class _Reader:
    """A model that reads a growing token list, feeding only the tokens it has not seen."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.cache = kv_cache(self.model)  # refuses, up front, a cache that cannot drop rows
        self.fed = 0
        self.forwards = 0
        self.last: torch.Tensor | None = None

    @torch.inference_mode()
    def logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probs ``[vocab]`` of the token after ``ids`` (an extension of what was fed)."""
        new = ids[self.fed :]
        if not new:  # nothing new (a piece of text that encoded to no token): the last answer holds
            return self.last
        device = self.loaded.device
        x = torch.tensor([new], dtype=torch.long, device=device)
        positions = torch.arange(self.fed, len(ids), device=device)
        out = self.model(
            input_ids=x, position_ids=positions[None], cache_position=positions, use_cache=True,
            logits_to_keep=1, **self.cache.kwargs,
        )  # fmt: skip
        self.fed = len(ids)
        self.forwards += 1
        self.last = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        return self.last

    def forget(self, length: int) -> None:
        """Keep only the first ``length`` tokens read (the rest will be read again)."""
        if self.fed > length:
            self.cache.crop(length)
            self.fed = length


def entropy(logprobs: torch.Tensor) -> float:
    """Shannon entropy in nats of the distribution with log-probs ``logprobs``."""
    p = logprobs.exp()
    return float(-(p * torch.where(p > 0, logprobs, torch.zeros_like(logprobs))).sum())


class _Side:
    """One model's view of the shared text: its own token ids, and how much text they cover."""

    def __init__(self, loaded, prompt_ids: list[int]) -> None:
        self.loaded = loaded
        self.tok = loaded.tokenizer
        self.reader = _Reader(loaded)
        self.ids = list(prompt_ids)
        self.prompt_len = len(prompt_ids)
        self.covered = 0  # characters of the generated text already in ``ids``
        self.eos = set(loaded.eos_token_ids)

    def sync(self, text: str) -> None:
        """Read the text the other model wrote since this one last looked. The piece is encoded
        together with this side's last generated token, so a word that runs across the switch
        is tokenized as this model's tokenizer would (the token is read again if it changes)."""
        piece = text[self.covered :]
        if not piece:
            return
        self.covered = len(text)
        if len(self.ids) > self.prompt_len:
            last = self.tok.decode(self.ids[-1:], skip_special_tokens=False)
            if last and not last.endswith("\ufffd") and text[: len(text) - len(piece)].endswith(last):
                merged = self.tok.encode(last + piece, add_special_tokens=False)
                if merged[:1] != self.ids[-1:]:
                    self.ids.pop()
                    self.reader.forget(len(self.ids))
                    self.ids.extend(merged)
                    return
                self.ids.extend(merged[1:])
                return
        self.ids.extend(self.tok.encode(piece, add_special_tokens=False))


def entropy_adaptive_decode(small, large, prompt_ids, *, max_new_tokens, threshold, window):
    """Returns ``(large-model token ids, finish_reason, stats)`` (``prompt_ids``: the large
    model's tokens)."""
    shared = same_vocabulary(large.tokenizer, small.tokenizer)
    if not shared:
        check_bridge(large.tokenizer, small.tokenizer)
    big = _Side(large, prompt_ids)
    if shared:
        little = _Side(small, [])
        little.ids = big.ids  # one list: a token appended by either model is read by both
    else:
        prompt_text = large.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        little = _Side(small, small.tokenizer.encode(prompt_text, add_special_tokens=False))
    recent: deque[float] = deque(maxlen=window)
    text = ""  # the generated text (text path)
    pending: list[int] = []  # the current model's tokens that are not whole characters yet
    owner: _Side | None = None  # the model that must go on while ``pending`` is not empty
    counts = {"large": 0, "small": 0}
    reason = "length"
    while counts["large"] + counts["small"] < max_new_tokens:
        if owner is None:
            if not shared:
                little.sync(text)
            lp = little.reader.logprobs(little.ids)
            recent.append(entropy(lp))
            side = little
            if sum(recent) / len(recent) > threshold:
                side = big
                if not shared:
                    big.sync(text)
                lp = big.reader.logprobs(big.ids)
        else:
            side = owner
            lp = side.reader.logprobs(side.ids)
        token = int(torch.argmax(lp))
        counts["large" if side is big else "small"] += 1
        side.ids.append(token)
        if token in side.eos:
            reason = "eos"
            break
        if shared:
            continue
        pending.append(token)
        piece = side.tok.decode(pending, skip_special_tokens=False)
        if piece.endswith("\ufffd") and len(pending) < 4:
            owner = side  # the same model finishes the character
            continue
        text += piece
        side.covered = len(text)
        pending, owner = [], None
    if not shared:
        ended_small = reason == "eos" and side is little
        if pending:  # cut at the length limit inside a character: keep what the bytes give
            text += side.tok.decode(pending, skip_special_tokens=False)
        big.sync(text)
        if ended_small and big.eos:
            big.ids.append(min(big.eos))
    total = counts["large"] + counts["small"]
    stats = {
        "large_tokens": counts["large"],
        "small_tokens": counts["small"],
        "large_share": counts["large"] / total if total else 0.0,
        "large_forwards": big.reader.forwards,
        "small_forwards": little.reader.forwards,
        "shared_vocabulary": shared,
    }
    return big.ids[big.prompt_len :], reason, stats


@register_strategy(
    "entropy-adaptive",
    "entropy-adaptive decoding: the small --draft model writes while its entropy is under a threshold, "
    "the large --model otherwise; lossy",
    needs_draft=True,
)
class EntropyAdaptive(Strategy):
    def __init__(
        self,
        ctx,
        threshold: Annotated[
            float, "entropy (nats) of the small model above which the large model writes", at_least(0)
        ] = 1.0,
        window: Annotated[int, "the entropy is averaged over this many last predictions", at_least(1)] = 1,
    ) -> None:
        super().__init__(ctx)
        self.small = ctx.draft
        self.threshold, self.window = threshold, window

    def decode(self, prompt_ids, *, max_new_tokens, context=None) -> StrategyOutput:
        ids, reason, stats = entropy_adaptive_decode(
            self.small, self.loaded, prompt_ids, max_new_tokens=max_new_tokens,
            threshold=self.threshold, window=self.window,
        )  # fmt: skip
        return StrategyOutput(
            token_ids=ids,
            finish_reason=reason,
            forwards=stats["large_forwards"] + stats["small_forwards"],
            stats=stats,
        )
