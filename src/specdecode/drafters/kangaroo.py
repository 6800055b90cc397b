"""``kangaroo`` (Liu et al. 2024, "Kangaroo: Lossless Self-Speculative Decoding via Double Early
Exiting"): the target's first few layers plus a small trained adapter draft for the target.

The draft model is the target's own shallow sub-network (its embedding and first
``exit_layer`` decoder layers, the *first early exit*) followed by the adapter of
:mod:`specdecode.training.kangaroo` (one attention block and a norm; train it with
``specdecode train kangaroo``) and the target's LM head. Drafting stops as soon as the draft's
confidence (its top probability) falls below ``threshold`` (the *second early exit*), or at
``max_draft`` tokens; the chain goes to the shared verifier, so the output is exactly the
target's, whatever the draft. With ``stop_head=online`` the SpecDec++-style stop rule of
:mod:`specdecode.drafters._stop` replaces the threshold (the first draft token always drafted).

The shallow layers are the target's layers with the target's weights, so their keys and values
for the committed tokens are the target's own. The drafter keeps them, and the adapter's, in
its own per-generation cache (:class:`_Rows`) rather than copying the target's rows, because
the adapter also needs every committed token's exit-layer hidden state, which the target's
forward does not hand out: each step it runs the shallow layers and the adapter over the tokens
committed since its last pass (the bonus token, and the last draft token when the whole draft
was accepted) in one batch, then one token at a time over its drafts. Rows of draft tokens the
target accepted are kept; the rest are dropped before the next pass.

Under sampling each draft token is drawn from the draft distribution ``q`` (the sampling
settings applied to the draft's logits), which goes to the verifier (speculative sampling);
under the Gumbel coupling the draft takes ``argmax(log q + g)`` with the verifier's noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch

from specdecode.drafters._draws import DraftDraws
from specdecode.drafters._stop import StopHead, StopThreshold, StopWalk, stop_head_for
from specdecode.drafters.base import Drafter
from specdecode.drafters.draft_model import ConfidenceThreshold
from specdecode.drafters.medusa import HeadsPath
from specdecode.drafters.swift import layer_stack
from specdecode.registry import at_least, in_range, register
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.target import check_readable
from specdecode.training.heads import default_heads_path
from specdecode.training.kangaroo import METHOD, causal_mask, load_adapter, shallow_pass
from specdecode.tree import DraftTree


class _Rows:
    """Keys and values per layer (the shallow layers, then the adapter) for one generation, in
    buffers that grow by doubling; passed to the layers as their cache (they call :meth:`update`)."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers  # [1, kv_heads, capacity, head_dim]
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.fill = [0] * n_layers

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` positions of every layer."""
        self.fill = [min(f, n) for f in self.fill]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Append a layer's new rows ``[1, kv_heads, m, head_dim]``; return all its rows."""
        start = self.fill[layer_idx]
        end = start + key_states.shape[-2]
        buf = self.keys[layer_idx]
        if buf is None or buf.shape[-2] < end:
            cap = max(2 * end, 64)
            shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
            new_k, new_v = key_states.new_empty(shape), value_states.new_empty(shape)
            if buf is not None:
                new_k[..., :start, :] = buf[..., :start, :]
                new_v[..., :start, :] = self.values[layer_idx][..., :start, :]
            self.keys[layer_idx], self.values[layer_idx] = new_k, new_v
        self.keys[layer_idx][..., start:end, :] = key_states
        self.values[layer_idx][..., start:end, :] = value_states
        self.fill[layer_idx] = end
        return self.keys[layer_idx][..., :end, :], self.values[layer_idx][..., :end, :]


@register(
    "kangaroo",
    "Kangaroo: the target's first layers plus a small trained adapter draft a chain, stopped when "
    "the draft's confidence drops (train with `specdecode train kangaroo`)",
)
class Kangaroo(Drafter):
    def __init__(
        self,
        ctx,
        heads: HeadsPath = "",
        threshold: Annotated[
            float,
            "keep drafting while the draft's top probability is at least this",
            in_range(0, 1, high_open=True),
        ] = 0.6,
        max_draft: Annotated[int, "longest draft per step", at_least(1)] = 6,
        adapt: Annotated[
            float, "threshold step after each verified draft token (0 = fixed, as in the paper)", at_least(0)
        ] = 0.0,
        stop_head: StopHead = "none",
        stop_threshold: StopThreshold = 0.7,
    ) -> None:
        loaded = ctx.target
        check_readable(loaded, METHOD)
        self.ctx = ctx
        model = loaded.model
        base, layers = layer_stack(model, METHOD)
        path = Path(heads).expanduser() if heads else default_heads_path(loaded, METHOD)
        self.adapter, self.info = load_adapter(path, loaded)
        self.path = path
        self.exit_layer = self.info["exit_layer"]
        self.base, self.shallow = base, list(layers[: self.exit_layer])
        self.lm_head = model.lm_head
        self.max_draft = max_draft
        self.stop = ConfidenceThreshold(threshold, adapt)  # shared across generations
        self.head = stop_head_for(stop_head)  # shared across generations
        self.stop_threshold = stop_threshold
        self._walk: StopWalk | None = None
        self.sampling = SamplingConfig()
        self.draws = DraftDraws()
        self._rows = _Rows(self.exit_layer + 1)
        self._fed: list[int] = []  # tokens whose rows the cache holds, position by position
        self._conf: list[float] = []

    def begin(self, prompt_ids, sampling) -> None:
        self.sampling = sampling
        device = self.ctx.target.device
        self.draws = DraftDraws(sampling, device)
        self._rows = _Rows(self.exit_layer + 1)  # this generation's own
        self._fed = []

    def _pass(self, tokens: list[int], start: int) -> torch.Tensor:
        """The shallow layers and the adapter over ``tokens`` at positions ``start ..`` (the
        cache holds the rows of every position before ``start``); the draft's logits after the
        last of them ``[vocab_size]``."""
        ids = torch.tensor([tokens], device=self.ctx.target.device)  # [1, m]
        z, rope = shallow_pass(self.base, self.shallow, ids, start, self._rows)  # [1, m, hidden]
        mask = causal_mask(len(tokens), start + len(tokens), z.dtype, z.device) if len(tokens) > 1 else None
        out = self.adapter(z, rope, mask, self._rows, layer_idx=self.exit_layer)
        self._fed[start:] = tokens
        return self.lm_head(out[0, -1]).float()

    @torch.inference_mode()
    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        # rows still valid: the longest prefix of what was fed that the text still holds (the
        # root, tokens[-1], always goes through again: its logits give the first draft token)
        valid = 0
        for a, b in zip(self._fed, tokens[:-1], strict=False):
            if a != b:
                break
            valid += 1
        self._rows.truncate(valid)
        del self._fed[valid:]
        logits = self._pass(tokens[valid:], valid)
        self.draws.forget(len(tokens))
        sampling = not self.sampling.greedy
        limit = min(self.max_draft, max_depth)
        out: list[int] = []
        rows: list[torch.Tensor] = []  # q of each draft token, [vocab_size] each
        self._conf = []
        self._walk = walk = StopWalk(self.head, self.stop_threshold) if self.head is not None else None
        while True:
            q = target_probs(logits, self.sampling) if sampling else logits.softmax(-1)
            conf = float(q.max())
            stop = conf < self.stop.value if walk is None else not walk.keep(q)
            if stop:
                break
            token = self.draws.pick(q, len(tokens) + len(out))  # at sequence position len(tokens) + len(out)
            out.append(token)
            rows.append(q)
            self._conf.append(conf)
            if len(out) >= limit:
                break
            logits = self._pass([token], len(tokens) + len(out) - 1)
        # coupled drafts are deterministic given the noise: the verifier needs no q
        draft_probs = torch.stack(rows) if self.draws.needs_q and out else None
        return DraftTree.chain(out, draft_probs)

    def observe(self, outcome) -> None:
        if self._walk is not None:
            self._walk.learn(len(outcome.tree), outcome.verdict.accepted)
        else:
            self.stop.update(self._conf[: len(outcome.tree)], outcome.verdict.accepted)
