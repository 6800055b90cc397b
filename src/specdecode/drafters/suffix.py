"""``suffix``: frequency-scored draft trees from suffix automata over this request and earlier ones.

The longest suffix of the context is matched in two texts: (a) this request's prompt and answer
so far, and (b) every earlier prompt and answer the decoder has seen (a bounded memory). Each
match proposes a tree of the continuations that followed it, ranked by how often each did;
the two trees are merged into one (a path both propose is one node). Ideas: Oliaro et al.,
"SuffixDecoding" (NeurIPS 2025, arXiv 2411.04975): frequency-scored speculation trees over
this request's and earlier requests' text, the depth bounded by the match length
(``max_spec_factor``), unlikely branches pruned (``min_token_prob``); Hu et al., "SAM-Decoding"
(ACL 2025): suffix automata, so that keeping the longest match costs amortized O(1) per token,
not a scan of the text. The automata are in :mod:`specdecode.drafters._suffix_automaton`.
SAM-Decoding's fallback for short matches is composition: inside ``hybrid`` the other sources
draft where this one has nothing likely to offer.

A node's probability for the budget policy is the product, along its path, of learned
acceptance rates (:class:`AcceptanceRates`), one per (source: this request or earlier ones,
match length bucket, depth bucket, bin of the continuation's frequency after its parent), so
the policy spends nodes where they are accepted.

State: this request's automaton and its match in the memory are per generation (created by
:meth:`begin`); the memory of earlier requests and the rates are shared by every fork. A
request's text joins the memory when it finishes (:meth:`finish`), so live requests never see
each other's partial text. The memory can be saved to and loaded from a safetensors file
(``memory_file=PATH``, or ``persist=true`` for ``cache_dir()/suffix/<model key>.safetensors``);
with a file, it is saved after every finished request.
"""

from __future__ import annotations

import heapq
import itertools
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from specdecode.budget import Budget, MaxNodes, policy_for
from specdecode.drafters._estimates import AcceptanceRates
from specdecode.drafters._state_file import PersistentState
from specdecode.drafters._suffix_automaton import Matcher, SharedMemory, SuffixAutomaton
from specdecode.drafters.base import CandidateDrafter, Candidates, StepOutcome
from specdecode.drafters.recycling import output_vocab_size
from specdecode.registry import at_least, in_range, register

FORMAT = "specdecode-suffix"
FORMAT_VERSION = "1"

OWN, EARLIER = 0, 1  # the sources: this request's text, earlier requests' texts
# Rate buckets: match length 1, 2, 3-4, 5-8, 9-16, 17+; depth 1, 2, 3-4, 5-8, 9+; frequency quarters.
N_MATCH, N_DEPTH, N_FREQ = 6, 5, 4
N_BUCKETS = 2 * N_MATCH * N_DEPTH * N_FREQ
# Priors of P(node accepted | parent accepted) in this request's text, by match length bucket
# (rows) and frequency bin (columns); roughly as measured with SmolLM2-135M on Spec-Bench prompts.
PRIOR = (
    (0.05, 0.15, 0.4, 0.5),
    (0.1, 0.25, 0.45, 0.6),
    (0.15, 0.35, 0.7, 0.8),
    (0.2, 0.4, 0.75, 0.85),
    (0.25, 0.45, 0.8, 0.9),
    (0.3, 0.5, 0.85, 0.95),
)
# Earlier requests' texts: the same, times this per match length bucket (short matches in a
# large memory are mostly chance).
PRIOR_EARLIER = (0.4, 0.6, 0.8, 0.9, 1.0, 1.0)


def bucket(source: int, matched: int, depth: int, freq: float) -> int:
    """The rate bucket of a node ``depth`` below a match of ``matched`` tokens in ``source``,
    followed ``freq`` of the times its parent's string occurred."""
    m = min((matched - 1).bit_length(), N_MATCH - 1)
    d = min((depth - 1).bit_length(), N_DEPTH - 1)
    f = min(int(freq * N_FREQ), N_FREQ - 1)
    return ((source * N_MATCH + m) * N_DEPTH + d) * N_FREQ + f


def prior_rates() -> list[float]:
    rates = []
    for b in range(N_BUCKETS):
        source, m, f = b // (N_MATCH * N_DEPTH * N_FREQ), b // (N_DEPTH * N_FREQ) % N_MATCH, b % N_FREQ
        rates.append(PRIOR[m][f] * (PRIOR_EARLIER[m] if source == EARLIER else 1.0))
    return rates


def default_memory_path(model_key: str) -> Path:
    from specdecode.models.cache import cache_dir

    return cache_dir() / "suffix" / f"{model_key}.safetensors"


@register(
    "suffix",
    "SuffixDecoding: frequency-scored trees of what followed the context's longest suffix, in this and earlier requests",
)
class SuffixDrafter(PersistentState, CandidateDrafter):
    FILE_FORMAT, FILE_VERSION = FORMAT, FORMAT_VERSION
    LABEL, WHAT, KIND, EMPTY = "suffix", "suffix memory", "suffix memory", "an empty memory"
    REQUIRED, PATH_OPTION = frozenset({"tokens", "lengths"}), "memory_file"
    replayable = True  # token-only proposals; begin() and candidates() touch per-generation state only

    def __init__(
        self,
        ctx,
        max_depth: Annotated[int, "deepest draft node", at_least(1)] = 24,
        max_spec_factor: Annotated[
            float, "draft no deeper than this times the matched length (at least 1)", at_least(0.0)
        ] = 4.0,
        min_token_prob: Annotated[
            float, "drop a node whose path followed the match less often than this", in_range(0.0, 1.0)
        ] = 0.1,
        max_memory_tokens: Annotated[
            int, "tokens of earlier requests remembered, oldest evicted (0: this request only)", at_least(0)
        ] = 65536,
        budget: Budget = 0,
        max_nodes: MaxNodes = 64,
        memory_file: Annotated[str, "safetensors file to load the memory from and save it to"] = "",
        persist: Annotated[bool, "load and save the memory in the cache folder, one file per model"] = False,
    ) -> None:
        loaded = ctx.target
        self.model_key = str(loaded.key)
        self.vocab = output_vocab_size(loaded)
        self.max_depth = max_depth
        self.max_spec_factor = max_spec_factor
        self.min_token_prob = min_token_prob
        self.policy = None if budget else policy_for(loaded, max_nodes=max_nodes)
        self.cap = budget or max_nodes
        # Shared by every fork: the memory of earlier requests and the acceptance rates.
        self.memory = SharedMemory(max_memory_tokens)
        self.rates = AcceptanceRates(prior_rates(), weight=10.0, monotone=False)
        self.begin([], None)
        self.path: Path | None = None
        if memory_file:
            self.path = Path(memory_file).expanduser()
            if self.path.exists():
                self.load(self.path, strict=True)
        elif persist:
            self.path = default_memory_path(self.model_key)
            if self.path.exists():
                self.load(self.path, strict=False)

    # ---- the drafter contract -------------------------------------------------------------
    def begin(self, prompt_ids, sampling) -> None:
        # Per generation, assigned afresh (never shared by forks).
        self.own = SuffixAutomaton(prompt_ids)
        self.matcher = Matcher(self.memory)
        self._text: list[int] | None = list(prompt_ids)

    def finish(self) -> None:
        text, self._text = self._text, None
        if text:
            self.memory.add(text)
            if self.path is not None:
                self._autosave()

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        # The engine's committed-token list, which it extends in place: at finish() it holds
        # the whole answer, including steps drafted by a prediction instead of this drafter.
        self._text = tokens
        own = self.own
        for i in range(own.size, len(tokens)):
            own.extend(tokens[i])
        self.matcher.update(tokens)
        roots = []
        state, matched = own.repeated_suffix()
        if matched:
            roots.append((OWN, state, matched))
        if self.matcher.length:
            roots.append((EARLIER, self.matcher.state, self.matcher.length))
        return self._grow(roots, max_depth)

    def _grow(self, roots: list[tuple[int, int, int]], max_depth: int) -> Candidates:
        """Best-first growth of the matches' continuation trees into one trie: a node's
        probability is its parent's times its rate; each popped node pushes its continuations
        (a child never likelier than its parent, so nodes come out best first)."""
        rates, min_p = self.rates.rates, self.min_token_prob
        sources = {OWN: (self.own.children, self.own.count)}
        sources[EARLIER] = (self.memory.children, self.memory.sam.count)
        tokens: list[int] = []
        parents: list[int] = []
        probs: list[float] = []
        tags: list[list[int]] = []  # the rate buckets of the sources that proposed each node
        index: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        heap: list = []
        tie = itertools.count()

        def push(src, state, node, p, freq, depth, matched, cap):
            children, count = sources[src]
            total = count[state]
            for c, token, child in children(state):
                f = c / total
                if freq * f < min_p:
                    break  # most frequent first: the rest are rarer
                b = bucket(src, matched, depth, f)
                entry = (-p * rates[b], next(tie), node, token, b, src, child, freq * f, depth, matched, cap)
                heapq.heappush(heap, entry)

        for src, state, matched in roots:
            cap = min(max_depth, self.max_depth, max(1, math.ceil(self.max_spec_factor * matched)))
            push(src, state, -1, 1.0, 1.0, 1, matched, cap)
        while heap and len(tokens) < self.cap:
            neg_p, _, parent, token, b, src, state, freq, depth, matched, cap = heapq.heappop(heap)
            node = index.get((parent, token))
            if node is None:  # else another source proposed it first, with a larger estimate
                node = index[(parent, token)] = len(tokens)
                tokens.append(token)
                parents.append(parent)
                probs.append(-neg_p)
                tags.append([])
            tags[node].append(b)
            if depth < cap:
                push(src, state, node, -neg_p, freq, depth + 1, matched, cap)
        return Candidates(tokens, parents, probs, tags)

    def learn(self, outcome: StepOutcome, judged) -> None:
        # Counts decay every step, drafted or not, so rates that fell too low to draft recover.
        self.rates.update([(b, ok) for buckets, ok in judged for b in buckets])

    # ---- persistence (PersistentState) ------------------------------------------------------
    def _tensors(self):
        texts = list(self.memory.texts)
        flat = np.fromiter(itertools.chain.from_iterable(texts), dtype=np.int32, count=self.memory.tokens)
        accepted, offered = self.rates.state()
        tensors = {
            "tokens": torch.from_numpy(flat),  # [total]: every text, oldest first
            "lengths": torch.tensor([len(t) for t in texts], dtype=torch.int64),  # [texts]
            "rate_accepted": torch.tensor(accepted, dtype=torch.float64),  # [N_BUCKETS]
            "rate_offered": torch.tensor(offered, dtype=torch.float64),  # [N_BUCKETS]
        }
        return tensors, {}

    def _apply(self, state) -> None:
        """The newest texts that fit the cap join the memory."""
        texts, accepted, offered = state
        self.memory.replace(texts)
        if accepted is not None:
            self.rates.set_state(accepted, offered)

    def _decode(self, tensors, meta, bad):
        tokens, lengths = tensors["tokens"], tensors["lengths"]
        stats = [tensors.get(k) for k in ("rate_accepted", "rate_offered")]
        if (
            tokens.dtype != torch.int32
            or tokens.ndim != 1
            or lengths.dtype != torch.int64
            or lengths.ndim != 1
        ):
            raise bad("tokens must be int32 [n] and lengths int64 [texts]")
        if (lengths < 0).any() or int(lengths.sum()) != tokens.numel():
            raise bad(f"the text lengths add up to {int(lengths.sum())}, not {tokens.numel()} tokens")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab):
            raise bad("token ids out of range")
        flat = tokens.tolist()
        ends = list(itertools.accumulate(lengths.tolist()))
        texts = [flat[e - n : e] for e, n in zip(ends, lengths.tolist(), strict=True)]
        if any(s is None or s.shape != (N_BUCKETS,) or s.dtype != torch.float64 for s in stats):
            return texts, None, None  # statistics of another layout: the priors instead
        return texts, stats[0].tolist(), stats[1].tolist()
