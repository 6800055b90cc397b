"""``swift`` (Xia et al., "SWIFT: On-the-Fly Self-Speculative Decoding", ICLR 2025): the target
drafts for itself with a subset of its own layers, skipping the others.

The draft pass runs the target's own modules (embedding, the kept decoder layers, final norm,
LM head) one token at a time. As in the paper, the kept layers attend to the keys and values
the *full* model computed for the committed tokens: the drafter keeps a mirror of the target's
committed KV rows (:class:`_Mirror`, copied row by row from a read-only
:class:`specdecode.target.TargetReader`, never written back) and appends its draft rows to the
mirror only. The target's cache is never touched; the verifier makes the output exactly the
target's, whatever the draft.

Which layers to skip is chosen on the fly (the paper's optimization phase, simplified here):

1. once per decoder, one forward over the first prompt ranks the middle layers by how little
   each changes its input (one minus the cosine between a layer's input and output hidden
   states, averaged over tokens: the layer redundancy ShortGPT calls Block Influence); the
   first and last layers are always kept;
2. the candidates skip the ``f * L`` least influential layers for each fraction ``f`` in
   ``candidates`` (``0``: no drafting at all, plain decoding);
3. the candidates take turns, a few steps each, until each has run ``trial_steps`` steps; the
   one with the most committed tokens per second (its drafting plus the target forwards
   scoring its drafts, as measured) is kept for the rest of this decoder's life.

Drafting stops when the draft's confidence (its top probability) falls below a threshold that
adapts to what the target accepts (as ``draft-model``'s does), or at ``max_draft`` tokens. With
``stop_head=online``, a SpecDec++-style stop rule (Huang et al. 2024) takes over: an acceptance
predictor trained online gives each draft token's probability of being accepted, and drafting
stops once the predicted probability that some token so far is rejected exceeds
``stop_threshold`` (:mod:`specdecode.drafters._stop`, shared with the other drafting methods).
Under sampling each draft token is drawn from the draft distribution q, which goes to the
verifier (speculative sampling); under the Gumbel coupling the draft takes
``argmax(log q + g)`` with the verifier's noise.

On small models skipping layers hurts the draft much more than on the paper's 13B-70B models,
and on a CPU a draft token costs nearly a target forward: see benchmarks/self-drafting/.
"""

from __future__ import annotations

import time
from typing import Annotated

import torch

from specdecode.drafters._draws import DraftDraws
from specdecode.drafters._stop import StopHead, StopThreshold, StopWalk, stop_head_for
from specdecode.drafters.base import Drafter
from specdecode.drafters.draft_model import ConfidenceThreshold
from specdecode.errors import SpecDecodeError
from specdecode.registry import Check, at_least, in_range, register
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.target import check_readable
from specdecode.tree import DraftTree


def _float_list(text: str) -> list[float] | None:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return None
    return values if values and all(0 <= v < 1 for v in values) else None


def _int_list(text: str) -> list[int] | None:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return None


def layer_stack(model, method: str = "swift"):
    """``(base, layers)`` of a transformers causal LM whose decoder layers ``method`` can run
    itself, or raises :class:`SpecDecodeError` naming what is missing."""
    base = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or not all(hasattr(base, a) for a in needed) or not hasattr(model, "lm_head"):
        raise SpecDecodeError(
            f"{method} runs the target's own decoder layers, and {type(model).__name__} does not expose "
            "them as a transformers decoder-only model does (model.layers, embed_tokens, norm, "
            "rotary_emb, lm_head): use another method"
        )
    kinds = set(getattr(model.config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise SpecDecodeError(
            f"{method} supports models whose layers all use full attention; this one has {sorted(kinds)}"
        )
    return base, base.layers


class _Mirror:
    """The drafter's own KV state for one generation: per layer, a copy of the target's committed
    rows followed by the draft rows of the pass in progress.

    Passed to the decoder layers as their cache (they call :meth:`update`). Rows are written into
    preallocated buffers, so a draft token costs no copy of the context.
    """

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers  # [1, kv_heads, capacity, head_dim]
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.committed = 0  # rows copied from the target
        self.fill = [0] * n_layers  # rows in use per layer (committed + this pass's drafts)

    def sync(self, reader, room: int) -> None:
        """Copy the target's committed rows not mirrored yet; leave room for ``room`` draft rows."""
        n = reader.length
        assert n >= self.committed, "the target's committed rows never shrink within a generation"
        for i in range(len(self.keys)):
            k, v = reader.kv(i)  # [1, kv_heads, n, head_dim] views: read, never written
            buf = self.keys[i]
            if buf is None or buf.shape[-2] < n + room:
                cap = max(2 * (n + room), 64)
                new_k = k.new_empty((*k.shape[:-2], cap, k.shape[-1]))
                new_v = v.new_empty((*v.shape[:-2], cap, v.shape[-1]))
                if buf is not None:
                    new_k[..., : self.committed, :] = buf[..., : self.committed, :]
                    new_v[..., : self.committed, :] = self.values[i][..., : self.committed, :]
                self.keys[i], self.values[i] = new_k, new_v
            self.keys[i][..., self.committed : n, :] = k[..., self.committed : n, :]
            self.values[i][..., self.committed : n, :] = v[..., self.committed : n, :]
        self.committed = n
        self.fill = [n] * len(self.keys)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Append a layer's new rows ``[1, kv_heads, m, head_dim]``; return all its rows."""
        start = self.fill[layer_idx]
        end = start + key_states.shape[-2]
        self.keys[layer_idx][..., start:end, :] = key_states
        self.values[layer_idx][..., start:end, :] = value_states
        self.fill[layer_idx] = end
        return self.keys[layer_idx][..., :end, :], self.values[layer_idx][..., :end, :]


class LayerSearch:
    """Which layers to skip: candidates ranked by measured committed tokens per second.

    Shared by every fork of a drafter (learned across generations). ``fractions`` of the
    rankable layers to skip; each candidate runs ``trial_steps`` steps, in turns of
    ``turn`` steps, then the best is kept.
    """

    def __init__(self, fractions: list[float], trial_steps: int, fixed: list[int] | None, turn: int = 4):
        self.fractions = fractions
        self.trial_steps = trial_steps
        self.turn = turn
        self.arms: list[frozenset[int]] | None = [frozenset(fixed)] if fixed is not None else None
        self.tokens = [0.0] * (len(self.arms) if self.arms else len(fractions))
        self.seconds = [0.0] * len(self.tokens)
        self.steps = [0] * len(self.tokens)
        self.best: int | None = 0 if fixed is not None else None
        self._turn_left = turn
        self._current = 0
        self.influence: list[float] = []  # per layer, for reports
        self.chosen_from: list[float] = []  # each candidate's tokens per second when the best was kept

    @property
    def ranked(self) -> bool:
        return self.arms is not None

    def rank(self, influence: list[float]) -> None:
        """Build the candidates from per-layer influence (first and last layers never skipped)."""
        self.influence = influence
        middle = sorted(range(1, len(influence) - 1), key=lambda i: influence[i])
        arms: list[frozenset[int]] = []
        for f in self.fractions:
            arm = frozenset(middle[: min(len(middle), round(f * len(influence)))])
            if arm not in arms:
                arms.append(arm)
        self.arms = arms
        self.tokens = [0.0] * len(arms)
        self.seconds = [0.0] * len(arms)
        self.steps = [0] * len(arms)

    def arm(self) -> int:
        """The candidate to run this step."""
        if self.best is not None:
            return self.best
        return self._current

    def record(self, arm: int, tokens: int, seconds: float) -> None:
        self.tokens[arm] += tokens
        self.seconds[arm] += seconds
        self.steps[arm] += 1
        if self.best is not None:
            return
        self._turn_left -= 1
        if all(s >= self.trial_steps for s in self.steps):
            self.chosen_from = [
                t / s if s > 0 else 0.0 for t, s in zip(self.tokens, self.seconds, strict=True)
            ]
            self.best = max(range(len(self.chosen_from)), key=self.chosen_from.__getitem__)
        elif self._turn_left <= 0 or self.steps[self._current] >= self.trial_steps:
            self._turn_left = self.turn
            n = len(self.steps)
            for k in range(1, n + 1):  # the next candidate still short of its trials
                nxt = (self._current + k) % n
                if self.steps[nxt] < self.trial_steps:
                    self._current = nxt
                    break

    def summary(self) -> list[dict]:
        """Per candidate: the layers it skips, steps run, committed tokens per second."""
        return [
            {
                "skip": sorted(arm),
                "steps": self.steps[i],
                "tokens_per_second": self.tokens[i] / self.seconds[i] if self.seconds[i] else None,
                "chosen": i == self.best,
            }
            for i, arm in enumerate(self.arms or [])
        ]


@register(
    "swift",
    "SWIFT: the target drafts with a subset of its own layers (KV of the kept layers shared), the "
    "skipped set chosen on the fly from measured speed; stops when the draft's confidence drops",
)
class Swift(Drafter):
    reads_target = frozenset({"kv"})

    def __init__(
        self,
        ctx,
        max_draft: Annotated[int, "longest draft per step", at_least(1)] = 8,
        threshold: Annotated[
            float, "initial confidence threshold to keep drafting", in_range(0, 1, high_open=True)
        ] = 0.5,
        adapt: Annotated[
            float, "threshold step after each verified draft token (0 = fixed)", at_least(0)
        ] = 0.02,
        skip: Annotated[
            str,
            "comma-separated layers to skip (empty: chosen on the fly from the candidates)",
            Check(lambda v: _int_list(v) is not None, "comma-separated layer indices"),
        ] = "",
        candidates: Annotated[
            str,
            "fractions of the layers to skip that the search tries (0: plain decoding)",
            Check(lambda v: _float_list(v) is not None, "comma-separated fractions in [0, 1)"),
        ] = "0,0.15,0.25,0.35,0.5",
        trial_steps: Annotated[int, "steps each candidate runs before the best is kept", at_least(1)] = 12,
        stop_head: StopHead = "none",
        stop_threshold: StopThreshold = 0.7,
    ) -> None:
        self.ctx = ctx
        model = ctx.target.model
        check_readable(ctx.target, "swift")
        self.base, self.layers = layer_stack(model)
        self.lm_head = model.lm_head
        n = len(self.layers)
        fixed = _int_list(skip) if skip.strip() else None
        if fixed is not None:
            bad = [i for i in fixed if not 0 <= i < n]
            if bad:
                raise SpecDecodeError(f"swift: skip names layers {bad}, but the model has layers 0..{n - 1}")
            if len(set(fixed)) >= n:
                raise SpecDecodeError("swift: skip names every layer; keep at least one")
        self.max_draft = max_draft
        self.stop = ConfidenceThreshold(threshold, adapt)  # learned across generations (shared)
        self.search = LayerSearch(_float_list(candidates), trial_steps, fixed)  # shared
        self.head = stop_head_for(stop_head)  # shared
        self.stop_threshold = stop_threshold
        self._walk: StopWalk | None = None
        self.reader = None
        self.sampling = SamplingConfig()
        self.draws = DraftDraws()
        self._mirror = _Mirror(n)
        self._arm = 0
        self._conf: list[float] = []
        self._draft_s = 0.0

    def attach(self, reader) -> None:
        self.reader = reader
        self._mirror = _Mirror(len(self.layers))  # this generation's own

    def begin(self, prompt_ids, sampling) -> None:
        self.sampling = sampling
        device = self.ctx.target.device
        self.draws = DraftDraws(sampling, device)
        if not self.search.ranked:
            self.search.rank(self._influence(prompt_ids))

    @torch.inference_mode()
    def _influence(self, prompt_ids: list[int]) -> list[float]:
        """Per layer: one minus the mean cosine between its input and output hidden states over
        (the last 256 tokens of) the prompt. Low values: the layer changes little."""
        ids = torch.tensor([prompt_ids[-256:]], device=self.ctx.target.device)
        states = self.ctx.target.model.model(input_ids=ids, output_hidden_states=True).hidden_states
        out = []
        for i in range(len(self.layers)):
            a, b = states[i][0].float(), states[i + 1][0].float()  # [tokens, hidden]
            out.append(float(1 - torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()))
        return out

    def _forward(self, token: int, position: int, kept: list[int]) -> torch.Tensor:
        """One draft token through the kept layers; the logits after it ``[vocab_size]``."""
        device = self.ctx.target.device
        h = self.base.embed_tokens(torch.tensor([[token]], device=device))  # [1, 1, hidden]
        pos = torch.tensor([[position]], device=device)
        rope = self.base.rotary_emb(h, position_ids=pos)
        for i in kept:
            h = self.layers[i](
                h, attention_mask=None, position_ids=pos, position_embeddings=rope, cache=self._mirror
            )
        return self.lm_head(self.base.norm(h))[0, -1].float()

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        start = time.perf_counter()
        self._arm = arm = self.search.arm()
        skipped = self.search.arms[arm]
        self._conf = []
        self._walk = walk = StopWalk(self.head, self.stop_threshold) if self.head is not None else None
        if not skipped:  # the candidate "skip nothing": plain decoding
            self._draft_s = time.perf_counter() - start
            return DraftTree.empty()
        kept = [i for i in range(len(self.layers)) if i not in skipped]
        limit = min(self.max_draft, max_depth)
        self._mirror.sync(self.reader, limit + 1)
        root = len(tokens) - 1  # its position; the target's cache holds every token before it
        self.draws.forget(len(tokens))
        sampling = not self.sampling.greedy
        out: list[int] = []
        rows: list[torch.Tensor] = []  # q of each draft token, [vocab_size] each
        last = tokens[-1]
        while len(out) < limit:
            logits = self._forward(last, root + len(out), kept)  # [vocab_size]
            q = logits.softmax(-1) if not sampling else target_probs(logits, self.sampling)
            conf = float(q.max())
            stop = conf < self.stop.value if walk is None else not walk.keep(q)
            if stop:
                break
            last = self.draws.pick(q, len(tokens) + len(out))  # at sequence position len(tokens) + len(out)
            out.append(last)
            rows.append(q)
            self._conf.append(conf)
        self._draft_s = time.perf_counter() - start
        # coupled drafts are deterministic given the noise: the verifier needs no q
        draft_probs = torch.stack(rows) if self.draws.needs_q and out else None
        return DraftTree.chain(out, draft_probs)

    def observe(self, outcome) -> None:
        if self._walk is not None:
            self._walk.learn(len(outcome.tree), outcome.verdict.accepted)
        else:
            self.stop.update(self._conf[: len(outcome.tree)], outcome.verdict.accepted)
        self.search.record(self._arm, len(outcome.verdict.tokens), self._draft_s + outcome.forward_seconds)
