"""``recycling``: Token Recycling (Luo et al. 2024, "Turning Trash into Treasure: Accelerating
Inference of Large Language Models with Token Recycling").

Every verification computes the target's distribution after the root and after every draft
node, rejected ones included. Token Recycling keeps that "trash": an adjacency matrix
``M[vocab, k]`` holds, for each token, the target's top-k next tokens the last time that token
was scored. ``M[token of row r] = topk(logits[r])`` for every scored row after each step (one
``topk``, one indexed assignment). Drafts are trees read from ``M``: the root's row gives its
children, each child's row its children, and so on.

Where the paper uses a fixed tree template, here the tree is grown best-first: the rank-j
child of an accepted node is accepted with an estimated rate (running counts with a prior), a
node's probability is the product of the rates along its path, and the shared
:class:`specdecode.budget.BudgetPolicy` decides from the measured latency curve how many of the
likeliest nodes are worth scoring (large trees on a GPU, small ones on a CPU).

The matrix starts empty (no draft from a token never scored); the prompt's own bigrams fill
empty rows so the first prompt gets some drafts. It persists across prompts of a decoder and
can be saved to and loaded from a safetensors file (``matrix_file=PATH``, or ``persist=true``
for ``cache_dir()/recycling/<model key>.safetensors``).

On a CPU the policy scores few nodes; the matrix pays most once warm (``persist=true``).
Measured figures: benchmarks/README.md.
"""

from __future__ import annotations

import heapq
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from specdecode.budget import Budget, MaxNodes, policy_for
from specdecode.drafters._estimates import AcceptanceRates
from specdecode.drafters._state_file import PersistentState
from specdecode.drafters.base import CandidateDrafter, Candidates, StepOutcome
from specdecode.registry import at_least, register

FORMAT = "specdecode-recycling"
FORMAT_VERSION = "1"

# P(rank-j child accepted | parent accepted) before any evidence, as measured on SmolLM2-135M
# (six Spec-Bench prompts, greedy, 16-node trees): about 0.40, 0.11, 0.07, 0.04, then < 0.01.
PRIOR_RATES = (0.4, 0.11, 0.07, 0.04, 0.01, 0.008, 0.006, 0.005)
# The same for rows seeded from the prompt's bigrams, which the target never filled.
PRIOR_SEEDED = (0.15, 0.05, 0.03, 0.02, 0.01, 0.008, 0.006, 0.005)


def output_vocab_size(loaded) -> int:
    """Rows of the target's logits."""
    head = loaded.model.get_output_embeddings() if hasattr(loaded.model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    config = loaded.model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return int(config.vocab_size)


def default_matrix_path(model_key: str) -> Path:
    from specdecode.models.cache import cache_dir

    return cache_dir() / "recycling" / f"{model_key}.safetensors"


@register(
    "recycling",
    "Token Recycling: a [vocab, k] matrix of the target's top-k next tokens, from every scored node",
)
class TokenRecycling(PersistentState, CandidateDrafter):
    FILE_FORMAT, FILE_VERSION = FORMAT, FORMAT_VERSION
    LABEL, WHAT, KIND, EMPTY = "recycling", "matrix", "token recycling matrix", "an empty matrix"
    REQUIRED, PATH_OPTION = frozenset({"matrix"}), "matrix_file"

    def __init__(
        self,
        ctx,
        k: Annotated[int, "next tokens kept per token (the matrix's width)", at_least(1)] = 8,
        budget: Budget = 0,
        max_nodes: MaxNodes = 64,
        max_depth: Annotated[int, "deepest draft node", at_least(1)] = 16,
        matrix_file: Annotated[str, "safetensors file to load the matrix from and save it to"] = "",
        persist: Annotated[bool, "load and save the matrix in the cache folder, one file per model"] = False,
        save_every: Annotated[
            int, "with a file: save after this many steps (also on EOS)", at_least(1)
        ] = 256,
    ) -> None:
        loaded = ctx.target
        self.model_key = str(loaded.key)
        self.vocab = output_vocab_size(loaded)
        self.k = min(k, self.vocab)
        self.max_depth = max_depth
        self.save_every = save_every
        self.eos = set(loaded.eos_token_ids)
        # [vocab, k] int32, -1 = empty; rows fill left to right, entries of a row are distinct.
        # Kept in numpy: row reads in the hot path are cheap and inference mode does not apply.
        self.rows = np.full((self.vocab, self.k), -1, dtype=np.int32)
        self.seeded = np.zeros(self.vocab, dtype=bool)  # [vocab]: rows filled from prompt bigrams only
        # Acceptance rates by bucket: rank j in a row the target filled is bucket j, rank j in a
        # seeded row bucket k + j (seeded rows are much worse guesses).
        prior = [PRIOR_RATES[min(j, len(PRIOR_RATES) - 1)] for j in range(self.k)]
        prior += [PRIOR_SEEDED[min(j, len(PRIOR_SEEDED) - 1)] for j in range(self.k)]
        self.rates = AcceptanceRates(prior, block=self.k)
        self.policy = None if budget else policy_for(loaded, max_nodes=max_nodes)
        self.cap = budget or max_nodes
        self.path: Path | None = None
        if matrix_file:
            self.path = Path(matrix_file).expanduser()
            if self.path.exists():
                self.load(self.path, strict=True)
        elif persist:
            self.path = default_matrix_path(self.model_key)
            if self.path.exists():
                self.load(self.path, strict=False)
        self._unsaved = 0
        self._row_cost = 0.0  # seconds of learn() work per scored row (running average)

    @property
    def matrix(self) -> torch.Tensor:
        """The adjacency matrix ``[vocab, k]`` (int32, -1 for empty), sharing memory with the drafter."""
        return torch.from_numpy(self.rows)

    # ---- the drafter contract -------------------------------------------------------------
    def begin(self, prompt_ids, sampling) -> None:
        if self._unsaved and self.path is not None:
            self._autosave()
        self.seed(prompt_ids)

    def seed(self, ids: list[int]) -> None:
        """Fill empty slots of rows from the bigrams of ``ids`` (rows the target filled are full)."""
        rows, k, vocab = self.rows, self.k, self.vocab
        for a, b in zip(ids, ids[1:], strict=False):
            if not (0 <= a < vocab and 0 <= b < vocab) or rows[a, k - 1] >= 0:
                continue
            row = rows[a]
            for j in range(k):
                if row[j] == b:
                    break
                if row[j] < 0:
                    row[j] = b
                    self.seeded[a] = True
                    break

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        rows, rates, seeded = self.rows, self.rates.rates, self.seeded
        depth_cap = min(self.max_depth, max_depth)
        k = self.k
        out_tokens: list[int] = []
        parents: list[int] = []
        probs: list[float] = []
        buckets: list[int] = []
        # Best-first growth. Rates fall with the rank, so a node's rank-(j+1) sibling is never
        # likelier than it: push a node's first child and next sibling only when it is popped.
        # Heap entries: (-probability, tie, parent node, parent probability, bucket, token, depth).
        heap: list[tuple[float, int, int, float, int, int, int]] = []
        tie = 0
        root = tokens[-1]
        first = int(rows[root, 0])
        if first >= 0:
            b = k if seeded[root] else 0
            heap.append((-rates[b], 0, -1, 1.0, b, first, 1))
        while heap and len(out_tokens) < self.cap:
            neg_p, _, parent, parent_p, b, token, depth = heapq.heappop(heap)
            node = len(out_tokens)
            out_tokens.append(token)
            parents.append(parent)
            probs.append(-neg_p)
            buckets.append(b)
            j = b % k
            if j + 1 < k:
                sibling = int(rows[root if parent < 0 else out_tokens[parent], j + 1])
                if sibling >= 0:
                    tie += 1
                    heapq.heappush(
                        heap, (-parent_p * rates[b + 1], tie, parent, parent_p, b + 1, sibling, depth)
                    )
            if depth < depth_cap:
                child = int(rows[token, 0])
                if child >= 0:
                    cb = k if seeded[token] else 0
                    tie += 1
                    heapq.heappush(heap, (neg_p * rates[cb], tie, node, -neg_p, cb, child, depth + 1))
        # Each scored node also costs its row's top-k in observe(): measured, per node.
        return Candidates(out_tokens, parents, probs, buckets, self._row_cost)

    def learn(self, outcome: StepOutcome, judged) -> None:
        tree, logits, verdict = outcome.tree, outcome.logits, outcome.verdict
        root = outcome.tokens[-len(verdict.tokens) - 1]
        # Recycle every scored row: M[token of row r] = topk(logits[r]).
        start = time.perf_counter()
        scored = np.asarray([root, *tree.tokens], dtype=np.int64)
        top = torch.topk(logits, self.k, dim=-1).indices  # [n + 1, k]
        self.rows[scored] = top.to("cpu", torch.int32).numpy()
        self.seeded[scored] = False
        self._row_cost = 0.9 * self._row_cost + 0.1 * (time.perf_counter() - start) / len(scored)
        # Counts decay every step, drafted or not, so rates that fell too low to draft recover.
        self.rates.update(judged)
        if self.path is not None:
            self._unsaved += 1
            if self._unsaved >= self.save_every or any(t in self.eos for t in verdict.tokens):
                self._autosave()

    # ---- persistence (PersistentState) ------------------------------------------------------
    def _tensors(self):
        accepted, offered = self.rates.state()
        tensors = {
            "matrix": torch.from_numpy(self.rows.copy()),
            "seeded": torch.from_numpy(self.seeded.astype(np.uint8)),
            # [2, k]: row 0 for rows the target filled, row 1 for seeded rows
            "rank_accepted": torch.tensor(accepted, dtype=torch.float64).view(2, self.k),
            "rank_offered": torch.tensor(offered, dtype=torch.float64).view(2, self.k),
        }
        return tensors, {"k": str(self.k)}

    def _saved(self) -> None:
        self._unsaved = 0

    def _apply(self, state) -> None:
        rows, seeded, accepted, offered = state
        self.rows[...] = rows
        self.seeded[...] = seeded
        if accepted is not None and offered is not None:
            self.rates.set_state(accepted, offered)

    def _decode(self, tensors, meta, bad):
        """A different ``k`` is fine: columns are cut or padded."""
        matrix = tensors["matrix"]
        if matrix.ndim != 2 or matrix.shape[0] != self.vocab:
            raise bad(
                f"vocabulary {meta.get('vocab_size')} / shape {tuple(matrix.shape)}, expected {self.vocab} rows"
            )
        if matrix.dtype != torch.int32:
            raise bad(f"dtype {matrix.dtype}, expected int32")
        m = matrix.numpy()
        if m.shape[1] >= self.k:
            m = m[:, : self.k]
        else:
            m = np.concatenate([m, np.full((m.shape[0], self.k - m.shape[1]), -1, dtype=np.int32)], axis=1)
        if m.size and (m.min() < -1 or m.max() >= self.vocab):
            raise bad("token ids out of range")
        if self.k > 1:
            if ((m[:, 1:] >= 0) & (m[:, :-1] < 0)).any():
                raise bad("a row has a gap")
            s = np.sort(m, axis=1)
            if ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any():
                raise bad("a row repeats a token")
        seeded = tensors.get("seeded")
        if seeded is None or seeded.shape != (self.vocab,):
            seeded = np.zeros(self.vocab, dtype=bool)
        else:
            seeded = seeded.numpy() != 0
        stats = [self._fit_stats(tensors.get(k)) for k in ("rank_accepted", "rank_offered")]
        if any(t is None for t in stats):
            stats = [None, None]
        return m, seeded, stats[0], stats[1]

    def _fit_stats(self, t: torch.Tensor | None) -> list[float] | None:
        """Saved ``[2, k']`` rank counts as a flat ``2 k`` list (columns cut or zero-padded)."""
        if t is None or t.ndim != 2 or t.shape[0] != 2:
            return None
        t = t.double()[:, : self.k]
        t = torch.cat([t, torch.zeros(2, self.k - t.shape[1], dtype=torch.float64)], dim=1)
        return t.flatten().tolist()
