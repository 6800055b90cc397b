"""Suffix automata for the ``suffix`` drafter: one per request, one over earlier requests.

A suffix automaton (Blumer et al. 1985) of a text has one state per class of substrings that
end at the same set of positions (their *endpos*); it has at most ``2 n`` states and ``3 n``
transitions for ``n`` tokens, and grows online in amortized O(1) per token. Two facts make it
the right index for drafting:

- the longest suffix of a growing context that occurs in the text is kept by a :class:`Matcher`
  in amortized O(1) per context token (follow a transition, or a suffix link and retry; the
  match grows by at most one per token and every suffix link shortens it);
- the continuations of a matched string are the state's transitions, and how often each
  followed it is the occurrence count of the state it leads to.

Occurrence counts are kept online by adding one to every state on the new state's suffix-link
chain. Occurrence sets strictly grow up that chain, so counts there strictly increase: stored
counts saturate at :data:`COUNT_CAP` and the walk stops at the first saturated state, so it
costs at most ``COUNT_CAP`` steps per token (a periodic text would otherwise cost its length).
A count is ``min(occurrences, COUNT_CAP)``; frequencies of strings seen more often than that
are only approximate, which matters little: long matches, the ones worth drafting from, are rare.

:class:`SharedMemory` holds finished requests' texts (prompt and answer) in one automaton, each
text followed by a separator token of its own (a negative id, never matched or proposed), and
evicts the oldest texts beyond a cap in tokens. An automaton cannot forget, so eviction
rebuilds it from the texts kept, and drops the oldest down to three quarters of the cap so
that a rebuild happens at most once per quarter cap of new text (amortized O(1) per token).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence

COUNT_CAP = 128  # occurrence counts saturate here (see the module docstring)
BRANCH = 8  # most continuations listed per state, by count
RESYNC = 256  # context tokens re-matched when the shared automaton changed


class SuffixAutomaton:
    """The suffix automaton of one token sequence, extended a token at a time.

    State 0 is the root (the empty string). Per state: ``next`` (token -> state), ``link``
    (suffix link; -1 for the root), ``length`` (its longest string's length) and ``count``
    (its strings' occurrences, saturating). ``steps`` counts the construction's loop iterations
    and ``count_steps`` the count walk's, for the linear-work checks.
    """

    __slots__ = ("next", "link", "length", "count", "last", "size", "steps", "count_steps", "transitions")

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link = [-1]
        self.length = [0]
        self.count = [0]
        self.last = 0  # the state of the whole text
        self.size = 0  # tokens added
        self.steps = 0
        self.count_steps = 0
        self.transitions = 0
        for t in tokens:
            self.extend(t)

    def _new_state(self, length: int, link: int, nxt: dict[int, int], count: int) -> int:
        self.next.append(nxt)
        self.link.append(link)
        self.length.append(length)
        self.count.append(count)
        return len(self.length) - 1

    def extend(self, token: int) -> None:
        """Append ``token`` to the text."""
        nxt, link, length = self.next, self.link, self.length
        cur = self._new_state(length[self.last] + 1, 0, {}, 0)
        p, steps = self.last, 0
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            self.transitions += 1
            p = link[p]
            steps += 1
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:  # split q: its strings up to length[p] + 1 also end here now
                clone = self._new_state(length[p] + 1, link[q], dict(nxt[q]), self.count[q])
                self.transitions += len(nxt[q])
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                    steps += 1
                link[q] = link[cur] = clone
        self.last = cur
        self.size += 1
        # The new end position joins every state on cur's suffix-link chain (saturating).
        count, v, walked = self.count, cur, 0
        while v != -1 and count[v] < COUNT_CAP:
            count[v] += 1
            v = link[v]
            walked += 1
        self.steps += steps
        self.count_steps += walked

    def step(self, state: int, matched: int, token: int) -> tuple[int, int, int]:
        """Extend a match ``(state, matched length)`` by ``token``: the longest suffix of the
        extended context that occurs in the text, and the suffix links followed to find it."""
        nxt, link, follows = self.next, self.link, 0
        while state and token not in nxt[state]:
            state = link[state]
            matched = self.length[state]
            follows += 1
        child = nxt[state].get(token)
        if child is None:
            return 0, 0, follows
        return child, matched + 1, follows

    def children(self, state: int) -> list[tuple[int, int, int]]:
        """The continuations of ``state``'s strings: ``(count, token, state)``, most frequent
        first, at most :data:`BRANCH`; separators (negative tokens) left out."""
        count = self.count
        kids = [(count[s], t, s) for t, s in self.next[state].items() if t >= 0]
        if len(kids) > BRANCH:
            return heapq.nlargest(BRANCH, kids)
        kids.sort(reverse=True)
        return kids

    def repeated_suffix(self) -> tuple[int, int]:
        """The longest suffix of the text that also occurs earlier: ``(state, length)``."""
        if self.last == 0:
            return 0, 0
        state = self.link[self.last]
        return state, self.length[state]


class SharedMemory:
    """Finished requests' texts in one automaton, the oldest evicted beyond ``max_tokens``.

    Shared by every fork of a drafter; changed only by :meth:`add` and :meth:`replace` (from a
    drafter's ``finish`` and ``load``, which the decoder serializes). ``version`` changes with
    every change, so that matchers know to re-match.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.texts: deque[list[int]] = deque()
        self.tokens = 0
        self.version = 0
        self.sam = SuffixAutomaton()
        self._separator = 0
        self._kids: dict[int, list[tuple[int, int, int]]] = {}

    def add(self, text: Sequence[int]) -> None:
        """Remember ``text`` (its last ``max_tokens`` tokens at most)."""
        if self.max_tokens <= 0 or not text:
            return
        text = list(text[-self.max_tokens :])
        self.texts.append(text)
        self.tokens += len(text)
        if self.tokens > self.max_tokens:
            keep = self.max_tokens * 3 // 4
            while len(self.texts) > 1 and self.tokens > keep:
                self.tokens -= len(self.texts.popleft())
            self._rebuild()
        else:
            self._insert(text)
        self.version += 1
        self._kids = {}

    def replace(self, texts: Iterable[Sequence[int]]) -> None:
        """Forget everything, then remember ``texts`` (oldest first): the newest that fit."""
        kept: deque[list[int]] = deque()
        total = 0
        for text in reversed(list(texts)):
            room = self.max_tokens - total
            if room <= 0:
                break
            if text:
                kept.appendleft(list(text[-room:]))
                total += len(kept[0])
        self.texts, self.tokens = kept, total
        self._rebuild()
        self.version += 1
        self._kids = {}

    def _rebuild(self) -> None:
        self.sam = SuffixAutomaton()
        for text in self.texts:
            self._insert(text)

    def _insert(self, text: list[int]) -> None:
        sam = self.sam
        for t in text:
            sam.extend(t)
        self._separator -= 1  # its own separator: no match crosses from one text to the next
        sam.extend(self._separator)

    def children(self, state: int) -> list[tuple[int, int, int]]:
        """:meth:`SuffixAutomaton.children`, cached until the memory changes."""
        kids = self._kids.get(state)
        if kids is None:
            kids = self._kids[state] = self.sam.children(state)
        return kids


class Matcher:
    """The longest suffix of one growing context that occurs in a :class:`SharedMemory`.

    Each new context token costs one transition plus the suffix links followed; the match
    grows by at most one per token and each link shortens it, so ``follows <= fed``. When the
    memory changed (another request finished), the last :data:`RESYNC` context tokens are
    matched again from the root.
    """

    def __init__(self, memory: SharedMemory) -> None:
        self.memory = memory
        self.version = memory.version
        self.state = 0
        self.length = 0
        self.fed = 0  # context tokens consumed
        self.follows = 0  # suffix links followed, in all
        self.tokens_stepped = 0  # context tokens stepped, in all

    def update(self, context: Sequence[int]) -> None:
        memory = self.memory
        if memory.version != self.version:
            self.version = memory.version
            self.state = self.length = 0
            self.fed = max(0, len(context) - RESYNC)
        sam, state, length, follows = memory.sam, self.state, self.length, 0
        for i in range(self.fed, len(context)):
            state, length, f = sam.step(state, length, context[i])
            follows += f
        self.tokens_stepped += len(context) - self.fed
        self.state, self.length, self.fed = state, length, len(context)
        self.follows += follows
