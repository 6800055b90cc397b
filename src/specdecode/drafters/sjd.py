"""``sjd``: Speculative Jacobi Decoding.

Teng et al. 2024, "Accelerating Auto-regressive Text-to-Image Generation with Training-free
Speculative Jacobi Decoding". Jacobi decoding guesses the next ``W`` tokens and lets one
forward of the target refine them all; SJD makes it lossless under sampling by accepting the
guesses with the speculative sampling criterion instead of exact match.

The guess at each position is a token *sampled* from the target's distribution for that
position computed in the previous iteration (on a stale prefix: the guesses before it), and
that distribution is its draft distribution ``q``. The chain goes to the core verifier with
``draft_probs = q``, which accepts with ``min(1, p / q)`` and resamples a rejection from
``norm(max(0, p - q))``, so the output follows the target exactly. Under greedy decoding the
guesses are argmax predictions and acceptance is exact match: plain Jacobi decoding.

Bookkeeping per step (root at position 0, window positions ``1 .. W``): the forward returns the
target's distribution at positions ``1 .. m + 1`` for a chain of ``m`` scored guesses. Each
one is sampled for the next iterate, together with its distribution as ``q``; then the window
shifts by the committed count and guesses that no forward has refined yet keep their own
``(token, q)``. New tail positions are sampled from the last distribution available (that of
the window's last guess). Before the first forward of a prompt no distribution exists: the
first window copies what followed the root's latest earlier occurrence in the context, with a
one-hot ``q`` (a deterministic draft), or is empty.

Every ``q`` is the distribution its token was actually drawn from, after the same temperature,
top-k and top-p as the target's ``p`` (:func:`specdecode.sampling.target_probs`); the draws use
their own generator (seeded with the sampling seed + 1), never the verifier's. That is what
keeps the method lossless. How many guesses to score each step follows the latency curve
(:class:`specdecode.budget.BudgetPolicy`, with per-depth acceptance rates learned as it runs),
or a fixed ``budget``.
"""

from __future__ import annotations

from typing import Annotated

import torch

from specdecode.budget import Budget, nodes_to_score, policy_for
from specdecode.drafters._estimates import edge_stats
from specdecode.drafters.base import Drafter, StepOutcome
from specdecode.registry import at_least, register
from specdecode.sampling import SamplingConfig, target_probs
from specdecode.tree import DraftTree


@register(
    "sjd",
    "speculative Jacobi decoding: sampled Jacobi guesses, accepted with min(1, p/q); lossless (no draft model)",
)
class SpeculativeJacobi(Drafter):
    def __init__(
        self,
        ctx,
        window: Annotated[int, "Jacobi window: guessed positions", at_least(1)] = 8,
        budget: Budget = 0,
    ) -> None:
        self.W = window
        self.budget = budget
        self.device = ctx.target.device
        head = ctx.target.model.get_output_embeddings()
        self.vocab = int(getattr(head, "out_features", 0) or ctx.target.model.config.vocab_size)
        self.policy = policy_for(ctx.target) if budget == 0 else None
        self.stats = edge_stats()
        self.cfg = SamplingConfig()
        self.gen: torch.Generator | None = None
        self._reset()

    def _reset(self) -> None:
        self.window: list[int] = []  # guesses for the positions after the root
        self.q: torch.Tensor | None = None  # [len(window), vocab]: what each guess was drawn from
        self._scored = 0

    def begin(self, prompt_ids, sampling: SamplingConfig) -> None:
        self.cfg = sampling
        self.gen = None
        if not sampling.greedy:
            self.gen = torch.Generator(device=self.device)
            if sampling.seed is None:
                self.gen.seed()
            else:
                self.gen.manual_seed(sampling.seed + 1)
        self._reset()

    # ---- propose --------------------------------------------------------------------------
    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        if not self.window:
            self._initial_guess(tokens)
        limit = min(len(self.window), max_depth)
        probs, acc = [], 1.0
        for d in range(1, limit + 1):
            acc *= self.stats.get(d)
            probs.append(acc)
        m = nodes_to_score(self.policy, self.budget, probs, context=len(tokens) - 1)
        self._scored = m
        q = None if self.q is None else self.q[:m]
        return DraftTree.chain(self.window[:m], draft_probs=q)

    def _initial_guess(self, tokens: list[int]) -> None:
        """What followed the root's latest earlier occurrence, as deterministic drafts."""
        root = tokens[-1]
        for i in range(len(tokens) - 2, -1, -1):
            if tokens[i] == root:
                self.window = tokens[i + 1 : i + 1 + self.W]
                break
        if self.window and not self.cfg.greedy:
            self.q = torch.zeros(len(self.window), self.vocab, device=self.device)
            self.q[torch.arange(len(self.window)), torch.tensor(self.window)] = 1.0

    # ---- observe --------------------------------------------------------------------------
    def observe(self, outcome: StepOutcome) -> None:
        m, self._scored = self._scored, 0
        accepted = outcome.verdict.accepted
        rows = outcome.logits[: m + 1]  # [m + 1, vocab]: the target at window positions 1 .. m+1
        p = None if self.cfg.greedy else target_probs(rows, self.cfg)  # [m + 1, vocab]

        # Learn the acceptance rate per depth. Depth 1 from the first guess's exact acceptance
        # probability, scored or not (row 0 is always computed), so the estimate stays alive
        # while the policy scores nothing; deeper ones from the scored chain's outcome.
        if self.window:
            x = self.window[0]
            if p is None:
                self.stats.record(1, int(rows[0].argmax()) == x)
            else:
                self.stats.record(1, min(1.0, float(p[0, x]) / max(float(self.q[0, x]), 1e-30)))
        for d in range(2, min(accepted + 1, m) + 1):
            self.stats.record(d, d <= accepted)

        if p is None:
            new = rows.argmax(-1).tolist()
            window, q = new + self.window[m + 1 :], None
        else:
            new = torch.multinomial(p, 1, generator=self.gen).squeeze(1).tolist()
            window = new + self.window[m + 1 :]
            q = p if self.q is None or len(self.window) <= m + 1 else torch.cat([p, self.q[m + 1 :]])

        c = len(outcome.verdict.tokens)  # committed this step: shift the iterate past them
        window = window[c : c + self.W]
        if q is not None:
            q = q[c : c + self.W]
        # Tail: sample from the last distribution available (greedy: repeat the last guess).
        missing = self.W - len(window)
        if missing > 0 and self.cfg.greedy:
            window += [window[-1] if window else new[-1]] * missing
        elif missing > 0:
            last = q[-1] if len(q) else p[-1]  # [vocab]
            window += torch.multinomial(last, missing, replacement=True, generator=self.gen).tolist()
            q = torch.cat([q, last.expand(missing, -1)])
        self.window, self.q = window, q
