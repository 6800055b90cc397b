"""The drafter contract: ``begin`` a sequence, ``propose`` a tree, ``observe`` the outcome."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from specdecode.drafters._estimates import judged_children
from specdecode.sampling import SamplingConfig
from specdecode.tree import DraftTree

if TYPE_CHECKING:
    from specdecode.models.loader import LoadedModel
    from specdecode.verify import Verdict


@dataclass
class MethodContext:
    """What a method may use: the target (never its KV cache), an optional draft model."""

    target: LoadedModel
    draft: LoadedModel | None = None


@dataclass
class StepOutcome:
    """What one verification step produced, for drafters that learn from it."""

    tree: DraftTree  # n nodes
    logits: torch.Tensor  # [n + 1, vocab_size]: target logits after the root and after each node
    verdict: Verdict
    tokens: list[int]  # every committed token after this step (prompt included)
    forward_seconds: float = 0.0  # wall time of the target forward that scored the tree
    context: int = 0  # tokens in the target's KV cache before that forward


@dataclass
class Candidates:
    """A drafter's candidate nodes before the budget cut, for composing drafters (``hybrid``).

    Nodes in topological order (``parents[i] < i``); ``probs[i]``: the estimated probability
    that the target accepts node ``i`` (never above its parent's); ``tags[i]``: the drafter's
    own label of the node, handed back to :meth:`Drafter.learn` when the node is judged;
    ``cost_per_node``: seconds of the drafter's work per node scored.
    """

    tokens: list[int]  # [n]
    parents: list[int]  # [n], each < its index (-1: the root)
    probs: list[float]  # [n]
    tags: list  # [n]
    cost_per_node: float = 0.0


class Drafter:
    """Base class: proposes nothing, which is plain autoregressive decoding.

    Drafters that can be combined with others (``hybrid``) also implement :meth:`candidates`
    and :meth:`learn`; their own ``propose``/``observe`` are built from the two.

    State has two owners. What one generation needs (its position in the text, indexes of its
    context, a draft model's KV cache, its RNG) belongs to the drafter instance serving that
    generation, and :meth:`begin` creates it afresh: assigned, never reset in place, so that a
    :meth:`fork` never shares it. What is learned across generations (statistics, matrices,
    pools) is held by objects that every fork of a drafter shares; the decoder serializes the
    calls that touch it (see :class:`specdecode.engine.Decoder`).
    """

    composable = False
    # What this drafter reads of the target's forwards ("hidden": the final hidden state of the
    # newest cached token; "kv": the committed KV rows); the decoder hands it a read-only
    # :class:`specdecode.target.TargetReader` through :meth:`attach` at each generation's start.
    reads_target: frozenset[str] = frozenset()
    # True when a proposal depends only on the committed tokens and the learned state, and
    # begin() + propose() on a fork write nothing shared: ``auto`` may then replay the drafter
    # over a finished answer to learn what it would have gained there (and, through
    # :meth:`replayed`, teach it which of those proposals greedy decoding would have accepted).
    replayable = False

    def fork(self) -> Drafter:
        """A drafter for a concurrent generation: shares the learned state, not the per-generation
        state (which its :meth:`begin` creates)."""
        return copy.copy(self)

    def begin(self, prompt_ids: list[int], sampling: SamplingConfig) -> None:
        """A new sequence starts; ``prompt_ids`` is the whole prompt."""

    def attach(self, reader) -> None:
        """This generation's read access to the target (only when :attr:`reads_target` asks)."""

    def finish(self) -> None:
        """The sequence ended (or its consumer stopped early): hand what it taught to the
        shared state."""

    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        """A draft tree below ``tokens[-1]`` (the root), no deeper than ``max_depth`` (>= 1)."""
        return DraftTree.empty()

    def observe(self, outcome: StepOutcome) -> None:
        """The target verified the last proposal."""

    def replayed(self, tree: DraftTree, path: list[int]) -> None:
        """A replay (``auto``) found that greedy verification would have accepted ``path`` of
        the last proposal ``tree``; drafters that keep acceptance statistics learn from it."""

    # ---- composition (optional) -----------------------------------------------------------
    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        """Every candidate node with its acceptance estimate, uncut (see :class:`Candidates`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be combined with other drafters")

    def learn(self, outcome: StepOutcome, judged: list[tuple[object, bool]]) -> None:
        """Learn from a verification: ``judged`` holds ``(tag, accepted)`` for each of this
        drafter's candidate nodes that the verifier judged (those whose parent it accepted)."""

    def chosen(self, n: int) -> None:
        """``n`` of the last :meth:`candidates` were scored (a hint for how many to search next)."""


class CandidateDrafter(Drafter):
    """A drafter written as :meth:`candidates` + :meth:`learn`; this base turns them into
    ``propose`` and ``observe``, the same way for every such drafter.

    One budget rule: with a :attr:`policy` (:class:`specdecode.budget.BudgetPolicy`), the
    policy chooses how many of the candidates, best first, to score (possibly none: plain
    decoding this step); without one, every candidate is scored (the drafter caps them itself,
    e.g. at a fixed ``budget``). :meth:`learn` runs after every step, drafted or not, with the
    judged nodes' tags, so estimates that fell too low to draft recover.
    """

    composable = True
    policy = None  # BudgetPolicy | None

    def propose(
        self, tokens: list[int], max_depth: int, *, where: Callable[[Candidates], Candidates] | None = None
    ) -> DraftTree:
        """``where``: a filter of the candidates before the budget cut, so that the budget is
        spent on the nodes it keeps (a grammar's, :mod:`specdecode.constraints`)."""
        c = self.candidates(tokens, max_depth)
        if where is not None:
            c = where(c)
        n = len(c.tokens)
        if self.policy is not None:
            # the target's cache holds every committed token but the root when it scores the tree
            n = self.policy.choose(c.probs, draft_cost_per_node=c.cost_per_node, context=len(tokens) - 1)
        self.chosen(n)
        self._proposed = c.tags[:n]  # per generation: assigned at every proposal
        return DraftTree(c.tokens[:n], c.parents[:n])

    def observe(self, outcome: StepOutcome) -> None:
        tags = self._proposed
        judged = judged_children(outcome.tree, outcome.verdict.path)
        self.learn(outcome, [(tags[node], ok) for node, ok in judged])

    def replayed(self, tree: DraftTree, path: list[int]) -> None:
        """Learn from a replayed proposal (``tree``, the last :meth:`propose`'s) that greedy
        verification would have accepted along ``path``: the same statistics as
        :meth:`observe`, without a forward (``learn`` gets no outcome; only a replayable
        drafter, whose ``learn`` reads none, is replayed)."""
        tags = self._proposed
        self.learn(None, [(tags[node], ok) for node, ok in judged_children(tree, path)])
