"""``hybrid``: several train-free drafters proposing into one tree, sized by measured cost.

Each source drafter (``pld``, ``recycling``, ``aded``) lists its candidate nodes with its own
estimate of the probability that the target accepts each (:meth:`Drafter.candidates`). The
candidates are merged into one trie: a path that two sources propose is one node, with the
larger of their estimates. The merged nodes are ranked by that probability and the shared
:class:`specdecode.budget.BudgetPolicy` chooses how many to score from the latency curve, so
the sources compete for the same budget node by node: a long prompt-lookup match wins where
the text copies the prompt, the tri-gram or recycled rows elsewhere.

Why it pays on a CPU: the forward's cost grows slowly with the number of tokens scored (the
latency curve of ``specdecode calibrate``), so a few extra nodes from a second source cost little, while a single source often has nothing good to offer.
After verification each source learns from the nodes it proposed (its acceptance rates) and
from everything scored (recycled rows, tri-gram statistics).

Measured figures: benchmarks/README.md.
"""

from __future__ import annotations

from typing import Annotated

from specdecode.budget import Budget, MaxNodes, policy_for
from specdecode.drafters._estimates import sort_by_probability
from specdecode.drafters.base import CandidateDrafter, Candidates, Drafter, StepOutcome
from specdecode.errors import SpecDecodeError
from specdecode.registry import get_method, list_methods, register


def composable_methods() -> list[str]:
    """Registered methods whose drafters can be combined (they implement ``candidates``)."""
    return [m.name for m in list_methods() if getattr(m.factory, "composable", False)]


def parse_sources(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    known = ", ".join(composable_methods())
    if not names:
        raise SpecDecodeError(f"hybrid: sources is empty; give some of {known}, e.g. sources=pld,aded")
    for name in names:
        if name not in composable_methods():
            raise SpecDecodeError(
                f"hybrid: {name!r} cannot be a source; the sources that can be combined are {known}"
            )
    if len(set(names)) != len(names):
        raise SpecDecodeError(f"hybrid: a source is named twice in {text!r}")
    return names


@register(
    "hybrid",
    "train-free drafters (pld + aded + recycling) merged into one tree, sized by the latency curve",
)
class Hybrid(CandidateDrafter):
    composable = False  # its sources are; a hybrid of hybrids is not offered

    def __init__(
        self,
        ctx,
        sources: Annotated[
            str, "comma-separated drafters to combine: pld, recycling, aded"
        ] = "pld,aded,recycling",
        budget: Budget = 0,
        max_nodes: MaxNodes = 64,
        adapt_cost: Annotated[
            bool, "correct the calibrated latency curve online from the forwards timed while decoding"
        ] = False,
    ) -> None:
        self.names = parse_sources(sources)
        self.sources: list[Drafter] = []
        for name in self.names:
            spec = get_method(name)
            self.sources.append(spec.factory(ctx, **spec.parse_options({})))
        self.budget = budget
        self.policy = None if budget else policy_for(ctx.target, max_nodes=max_nodes, adapt=adapt_cost)

    def fork(self) -> Hybrid:
        clone = super().fork()
        clone.sources = [source.fork() for source in self.sources]
        return clone

    def begin(self, prompt_ids, sampling) -> None:
        for source in self.sources:
            source.begin(prompt_ids, sampling)

    def finish(self) -> None:
        for source in self.sources:
            source.finish()

    def candidates(self, tokens: list[int], max_depth: int) -> Candidates:
        """The sources' candidates merged into one trie, best first; a node's tag lists the
        ``(source, source's tag)`` of every source that proposed it."""
        out: list[int] = []
        parents: list[int] = []
        probs: list[float] = []
        owners: list[list[tuple[int, object]]] = []
        index: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        cost = 0.0
        for s, source in enumerate(self.sources):
            c = source.candidates(tokens, max_depth)
            cost = max(cost, c.cost_per_node)
            local: list[int] = []  # the source's node i is merged node local[i]
            for token, parent, p, tag in zip(c.tokens, c.parents, c.probs, c.tags, strict=True):
                key = (-1 if parent < 0 else local[parent], token)
                node = index.get(key)
                if node is None:
                    node = index[key] = len(out)
                    out.append(token)
                    parents.append(key[0])
                    probs.append(p)
                    owners.append([])
                elif p > probs[node]:
                    probs[node] = p
                owners[node].append((s, tag))
                local.append(node)
        # A child's estimate never exceeds its parent's in any source, so none exceeds the
        # merged parent's (the maximum): the sorted order is still topological.
        out, parents, probs, order = sort_by_probability(out, parents, probs)
        owners = [owners[i] for i in order]
        if self.policy is None:  # a fixed budget
            del out[self.budget :], parents[self.budget :], probs[self.budget :], owners[self.budget :]
        self._owners = owners  # per generation: assigned at every proposal
        return Candidates(out, parents, probs, owners, cost)

    def chosen(self, n: int) -> None:
        for s, source in enumerate(self.sources):
            source.chosen(sum(1 for o in self._owners[:n] if any(src == s for src, _ in o)))

    def learn(self, outcome: StepOutcome, judged) -> None:
        if self.policy is not None and self.policy.costs is not None:
            self.policy.costs.record(len(outcome.tree) + 1, outcome.context, outcome.forward_seconds)
        mine: list[list[tuple[object, bool]]] = [[] for _ in self.sources]
        for owners, ok in judged:
            for s, tag in owners:
                mine[s].append((tag, ok))
        for source, judged_here in zip(self.sources, mine, strict=True):
            source.learn(outcome, judged_here)
