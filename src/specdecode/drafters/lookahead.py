"""``lookahead``: lookahead decoding on a token tree.

Fu et al. 2024, "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding".
Each forward runs two branches. The *lookahead branch* is a Jacobi iteration: guess the next
``W`` tokens, let the target predict every position from the guesses before it, and take the
predictions as the next guesses. Its trajectory yields n-grams the target finds likely, kept in
a pool. The *verification branch* checks up to ``G`` pool n-grams that begin with the last
committed token. No draft model, no training.

The paper's lookahead branch is a 2D window (``W`` columns by ``N - 1`` levels, the last
iterates) with an attention pattern that is not a tree; here the target scores one
:class:`~specdecode.tree.DraftTree`, so the method takes a tree-shaped form:

- The lookahead branch is one Jacobi chain ``g_1 .. g_W`` below the root. The target's logits
  after node ``g_{j-1}`` (the root for ``j = 1``) are its prediction for position ``j`` given
  ``g_1 .. g_{j-1}``: the verifier reads them as the check of ``g_j`` (the chain is a draft like
  any other), :meth:`observe` as the next Jacobi iterate. After a step commits ``c`` tokens the
  iterate is shifted by ``c`` and its tail refilled (what followed the last guess in the text
  or the pool, else the last guess repeated).
- The older levels of the 2D window are not scored again. The drafter keeps the last ``N - 1``
  scored chains with their absolute positions and reads the paper's n-grams off their
  diagonals: (level ``T-N+2`` at position ``P-N+1``, ..., level ``T`` at ``P-1``, the new
  prediction at ``P``), where each token was the target's prediction right after its
  predecessor. A step costs ``W`` scored tokens, not ``W (N - 1)``.
- The verification branch: up to ``G`` pool n-grams that begin with the root, merged with the
  Jacobi chain into one trie so that siblings are distinct (as deterministic drafts must be)
  and shared prefixes are scored once. All of it goes in the same forward.
- Beside the Jacobi n-grams, the verification branch takes guesses from the committed text
  (the prompt included), as the paper seeds its pool from the prompt: what followed the root's
  earlier occurrences, up to ``text_len`` tokens, read live from the text so a repeat is seen
  at once. When a prompt ends they move into the pool (``first token -> continuations``, least
  recently used dropped beyond a cap per key), which persists across the prompts of a decoder
  (``reset_pool`` clears it at each prompt). A guess from text keeps the tokens before it;
  those matching the context before the root come first (then the newest), and have
  acceptance estimates of their own.

Tree size follows measured cost: every trie node gets an estimated acceptance probability, the
product along its path of per-edge rates kept per branch (Jacobi chain by depth and freshness;
pool by source, context match, and rank or depth). :class:`specdecode.budget.BudgetPolicy`
keeps the best ``n`` given the target's latency curve (``budget`` fixes a cap instead), which
may be none: on a CPU, where any second scored token costs about half a forward more, only
confident guesses pay. The rates learn from every candidate, scored or not, by checking it
against the tokens committed afterwards (for a deterministic draft that is the acceptance
event, or under sampling an unbiased draw of it), so they stay current while nothing is
drafted. The drafts are deterministic (one-hot ``q``), so the core verifier keeps sampling
lossless; the Jacobi guesses are argmax predictions in either mode.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Annotated

from specdecode.budget import Budget, nodes_to_score, policy_for
from specdecode.drafters._estimates import edge_stats
from specdecode.drafters.base import Drafter, StepOutcome
from specdecode.registry import at_least, register
from specdecode.tree import DraftTree

MAX_STAT_DEPTH = 16  # deeper nodes share the estimate of this depth
LEFT = 3  # context tokens kept before a committed n-gram, to rank the candidates that match it


class NgramPool:
    """n-grams by first token: ``first -> {continuation: left}``, newest last, at most ``cap`` per key.

    A continuation is a tuple of ``n - 1`` tokens. ``left`` is the tokens before ``first``
    where the n-gram was read off the committed text, ``None`` where it came from the Jacobi
    trajectory; it tells candidates that also match the context before the root.
    """

    def __init__(self, n: int, cap: int) -> None:
        self.n, self.cap = n, cap
        self.map: dict[int, OrderedDict[tuple[int, ...], tuple[int, ...] | None]] = {}

    def __len__(self) -> int:
        return sum(len(d) for d in self.map.values())

    def clear(self) -> None:
        self.map.clear()

    def add(self, first: int, rest: tuple[int, ...], left: tuple[int, ...] | None = None) -> None:
        d = self.map.get(first)
        if d is None:
            d = self.map[first] = OrderedDict()
        if rest in d:
            d.move_to_end(rest)
            if left is None:
                return
        d[rest] = left
        if len(d) > self.cap:
            d.popitem(last=False)

    def get(self, first: int, k: int) -> list[tuple[tuple[int, ...], tuple[int, ...] | None]]:
        """Up to ``k`` ``(continuation, left)`` pairs of ``first``, the most recently added first."""
        d = self.map.get(first)
        if not d or k <= 0:
            return []
        out = []
        for rest in reversed(d):
            out.append((rest, d[rest]))
            if len(out) == k:
                break
        return out


@register(
    "lookahead",
    "lookahead decoding: a Jacobi chain and n-gram pool guesses verified in one tree (no draft model)",
)
class Lookahead(Drafter):
    def __init__(
        self,
        ctx,
        window: Annotated[int, "Jacobi window W: guessed positions", at_least(1)] = 8,
        ngram: Annotated[int, "n-gram size N of the pool", at_least(2)] = 5,
        guesses: Annotated[int, "max pool n-grams G verified per step", at_least(0)] = 8,
        text_len: Annotated[
            int, "tokens guessed after an earlier occurrence of the root in the text", at_least(1)
        ] = 8,
        budget: Budget = 0,
        pool_cap: Annotated[int, "n-grams kept per first token", at_least(1)] = 16,
        reset_pool: Annotated[bool, "clear the n-gram pool at each prompt"] = False,
    ) -> None:
        self.W, self.N, self.G = window, ngram, guesses
        self.L = max(text_len, ngram - 1)
        self.budget = budget
        self.reset_pool = reset_pool
        self.policy = policy_for(ctx.target) if budget == 0 else None
        self.pool = NgramPool(ngram, pool_cap)
        self.stats = edge_stats()
        self._begin()

    def _begin(self) -> None:
        self.window: list[int] = []  # guesses for the positions after the root
        self.fresh: list[bool] = []  # guess predicted by the last forward (vs. refilled / stale)
        self.levels: deque = deque(maxlen=self.N - 1)  # (start, tokens, fresh) of scored chains
        self.pending: list[tuple] = []  # candidate tries waiting for the tokens that judge them
        self._tokens: list[int] = []  # the engine's token list of the current sequence
        self.occ: dict[int, OrderedDict[int, None]] = {}  # token -> its positions in this text
        self._indexed = 0  # positions before this one are in occ
        self._last: tuple | None = None  # what the last proposal scored, for observe()

    def begin(self, prompt_ids, sampling) -> None:
        if self.reset_pool:
            self.pool.clear()
        self._begin()

    def finish(self) -> None:
        """Learn from what is still pending, and keep this text's n-grams in the shared pool
        for the prompts to come."""
        self._resolve(self._tokens, final=True)
        for positions in self.occ.values():
            for i in positions:
                self._freeze(i)
        self.occ = {}

    # ---- propose --------------------------------------------------------------------------
    def propose(self, tokens: list[int], max_depth: int) -> DraftTree:
        self._tokens = tokens
        self._index_committed(tokens)
        self._fill(tokens)
        depth = min(max_depth, max(self.W, self.L))

        # One trie: the Jacobi chain first, then the pool's n-grams for the root.
        t_tok: list[int] = []
        t_par: list[int] = []
        t_dep: list[int] = []
        t_keys: list[set] = []
        index: dict[tuple[int, int], int] = {}

        def add(parent: int, token: int, key) -> int:
            node = index.get((parent, token))
            if node is None:
                node = index[(parent, token)] = len(t_tok)
                t_tok.append(token)
                t_par.append(parent)
                t_dep.append(1 if parent < 0 else t_dep[parent] + 1)
                t_keys.append(set())
            t_keys[node].add(key)
            return node

        jac, node = [], -1
        chain = min(self.W, depth)
        for d, (t, fresh) in enumerate(zip(self.window[:chain], self.fresh[:chain], strict=True), 1):
            node = add(node, t, ("jacobi", fresh, min(d, MAX_STAT_DEPTH)))
            jac.append(node)
        for rank, (rest, src, match) in enumerate(self._candidates(tokens)):
            node = -1
            for d, t in enumerate(rest[:depth], 1):
                key = (
                    ("pool", src, match, min(d, MAX_STAT_DEPTH))
                    if d > 1
                    else ("pool1", src, match, min(rank, 3))
                )
                node = add(node, t, key)
        self.pending.append((len(tokens) - 1, t_tok, t_par, t_dep, t_keys))

        # Rank nodes by estimated acceptance probability; keep as many as pay for themselves.
        est = self.stats.get
        prob: list[float] = []
        for i, p in enumerate(t_par):
            edge = max(est(k) for k in t_keys[i])
            prob.append(edge * (1.0 if p < 0 else prob[p]))
        # Ties go to the lower index, so a parent (prob >= its children's) always comes first.
        order = sorted(range(len(t_tok)), key=lambda i: (-prob[i], i))
        n = nodes_to_score(self.policy, self.budget, [prob[i] for i in order], context=len(tokens) - 1)
        keep = sorted(order[:n])
        new = {old: k for k, old in enumerate(keep)}
        tree = DraftTree([t_tok[i] for i in keep], [new.get(t_par[i], -1) for i in keep])
        self._last = (len(tokens) - 1, [new[i] for i in jac if i in new])  # chain: a prefix
        return tree

    def _candidates(self, tokens: list[int]) -> list[tuple[tuple[int, ...], str, int]]:
        """Up to G continuations of the root as ``(tokens, source, context match)``: from the
        root's earlier occurrences in this text and from the pool, those whose tokens before
        the root match the context longest first, then the newest (this text's first)."""
        root = tokens[-1]
        before = tuple(tokens[-1 - LEFT : -1])

        def matched(left) -> int:
            k = 0
            while k < min(len(left), len(before)) and left[-1 - k] == before[-1 - k]:
                k += 1
            return k

        found, seen = [], set()
        for i in reversed(self.occ.get(root, ())):
            rest = tuple(tokens[i + 1 : i + 1 + self.L])
            if rest not in seen:
                seen.add(rest)
                k = matched(tokens[max(0, i - LEFT) : i])
                found.append((-k, len(found), rest, "text", k))
        for rest, left in self.pool.get(root, self.pool.cap):
            if rest not in seen:
                seen.add(rest)
                k = 0 if left is None else matched(left)
                found.append((-k, len(found), rest, "jacobi" if left is None else "text", k))
        found.sort()
        return [(rest, src, k) for _, _, rest, src, k in found[: self.G]]

    def _index_committed(self, tokens: list[int]) -> None:
        """Note where each committed token occurs (once its continuation has begun)."""
        for i in range(self._indexed, len(tokens) - 1):
            positions = self.occ.get(tokens[i])
            if positions is None:
                positions = self.occ[tokens[i]] = OrderedDict()
            positions[i] = None
            if len(positions) > self.pool.cap:
                self._freeze(positions.popitem(last=False)[0])
        self._indexed = max(self._indexed, len(tokens) - 1)

    def _freeze(self, i: int) -> None:
        """Move the occurrence at position ``i`` of this text into the pool, as an n-gram."""
        tokens = self._tokens
        rest = tuple(tokens[i + 1 : i + 1 + self.L])
        if rest:
            self.pool.add(tokens[i], rest, tuple(tokens[max(0, i - LEFT) : i]))

    def _fill(self, tokens: list[int]) -> None:
        """Refill the window's tail: what followed the last guess's newest occurrence (in this
        text, else in the pool), else the last guess repeated."""
        while len(self.window) < self.W:
            last = self.window[-1] if self.window else tokens[-1]
            positions = self.occ.get(last)
            if positions:
                i = next(reversed(positions))
                ext = tokens[i + 1 : i + 1 + self.W - len(self.window)]
            else:
                found = self.pool.get(last, 1)
                ext = found[0][0] if found else (last,)
            for t in ext or (last,):
                if len(self.window) == self.W:
                    break
                self.window.append(t)
                self.fresh.append(False)

    # ---- observe --------------------------------------------------------------------------
    def observe(self, outcome: StepOutcome) -> None:
        tokens = outcome.tokens
        self._tokens = tokens
        self._resolve(tokens)
        if self._last is None:
            return
        r, jac = self._last  # root position, scored chain nodes
        self._last = None

        best = outcome.logits.argmax(-1).tolist()  # [n + 1]: the target's choice after each row
        m = len(jac)
        pred = [best[0]] + [best[i + 1] for i in jac]  # next guesses for positions r+1 .. r+m+1

        # The scored level: the root and the chain, with absolute positions from r.
        prev = self.levels[-1] if self.levels else None
        root_fresh = False
        if prev is not None and 0 <= r - 1 - prev[0] < len(prev[1]):
            root_fresh = prev[1][r - 1 - prev[0]] == tokens[r - 1]
        self.levels.append((r, [tokens[r]] + self.window[:m], [root_fresh] + self.fresh[:m]))
        self._collect_ngrams(r, pred)

        # Next Jacobi iterate, shifted past the committed tokens; the tail is refilled at propose.
        it = pred + self.window[m + 1 :]
        fresh = [True] * len(pred) + [False] * max(0, len(self.window) - m - 1)
        c = len(outcome.verdict.tokens)
        self.window, self.fresh = it[c : c + self.W], fresh[c : c + self.W]

    def _resolve(self, tokens: list[int], final: bool = False) -> None:
        """Learn from every candidate, scored or not, once the committed tokens can judge it.

        A deterministic draft path is accepted exactly when it matches the tokens the target
        commits (greedy), or with the probability that sampling commits it (sampling): so
        matching the committed continuation is the acceptance event, or an unbiased draw of it,
        for the nodes the budget left out as well.
        """
        keep = []
        for entry in self.pending:
            r, toks, pars, deps, keys = entry
            known = len(tokens) - 1 - r  # committed tokens after this trie's root
            if not final and deps and known < max(deps):
                keep.append(entry)
                continue
            matched = {-1}
            for i, t in enumerate(toks):
                if pars[i] in matched and deps[i] <= known:
                    hit = t == tokens[r + deps[i]]
                    for key in keys[i]:
                        self.stats.record(key, hit)
                    if hit:
                        matched.add(i)
        self.pending = keep

    def _collect_ngrams(self, r: int, pred: list[int]) -> None:
        """Add the diagonal n-grams that end at each new prediction (at position ``r + 1 + j``)."""
        n = self.N
        levels = list(reversed(self.levels))  # newest first
        for j, token in enumerate(pred):
            gram = [token]
            pos = r + j  # the position before the prediction's
            for start, toks, fresh in levels:
                k = pos - start
                if not 0 <= k < len(toks):
                    break
                gram.append(toks[k])
                if len(gram) == n:
                    self.pool.add(gram[-1], tuple(reversed(gram[:-1])))
                    break
                if not fresh[k]:  # not predicted right after the older level's token: no chain
                    break
                pos -= 1
