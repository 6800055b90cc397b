"""Target tokens to draft tokens and back: one object that the draft-model drafters ask.

When the draft's tokenizer is the target's, tokens pass unchanged (:class:`IdentityBridge`).
Otherwise drafting goes through text (universal assisted decoding, :class:`TextBridge`): the
committed text is re-tokenized for the draft, and the draft's continuation for the target.
Such drafts are deterministic, so they are verified as one-hot, which keeps sampling lossless.
"""

from __future__ import annotations

from specdecode.errors import SpecDecodeError

BRIDGE_PROBE = "Hello, world! 1234 + 56 = 1290.\n\tdef f(x): return x ** 2  # café, naïve, 你好"


def same_vocabulary(a, b) -> bool:
    """True when two tokenizers map the same strings to the same ids."""
    if a is b:
        return True
    try:
        return a.get_vocab() == b.get_vocab()
    except (AttributeError, NotImplementedError):
        return False


def check_bridge(target_tok, draft_tok) -> None:
    """Refuse a draft tokenizer that cannot carry the target's text."""
    for name, tok in (("draft", draft_tok), ("target", target_tok)):
        if tok is None:
            raise SpecDecodeError(f"the {name} model has no tokenizer, so its vocabulary cannot be bridged")
        ids = tok.encode(BRIDGE_PROBE, add_special_tokens=False)
        back = tok.decode(ids, skip_special_tokens=True)
        if back != BRIDGE_PROBE:
            raise SpecDecodeError(
                f"the {name} model's tokenizer cannot represent ordinary text without loss "
                f"({BRIDGE_PROBE!r} came back as {back!r}), so its vocabulary cannot be bridged; "
                "use a draft model with a byte-level tokenizer, or one with the target's tokenizer"
            )


def bridge_for(target_tok, draft_tok) -> IdentityBridge | TextBridge:
    """The bridge between two tokenizers; refuses a pair that text cannot bridge."""
    if same_vocabulary(target_tok, draft_tok):
        return IdentityBridge()
    check_bridge(target_tok, draft_tok)
    return TextBridge(target_tok, draft_tok)


class IdentityBridge:
    """The draft shares the target's vocabulary: its tokens (and probabilities) are the target's."""

    exact = True  # draft tokens are target tokens: q applies, confidences match acceptance
    overdraft = 0  # draft tokens beyond those wanted

    def fresh(self) -> IdentityBridge:
        return self  # holds no per-generation state

    def to_draft(self, tokens: list[int]) -> list[int]:
        return tokens

    def to_target(self, draft_ids: list[int], max_depth: int) -> list[int]:
        return draft_ids[:max_depth]


class TextBridge:
    """Through text, for a draft with another tokenizer; holds one generation's synced tokens
    (:meth:`fresh` gives a new generation its own)."""

    exact = False  # drafts are re-tokenized: verified as one-hot
    overdraft = 1  # the last re-tokenized token may be cut short and is left out

    def __init__(self, target_tok, draft_tok) -> None:
        self.target_tok = target_tok
        self.draft_tok = draft_tok
        self._dtokens: list[int] = []  # the committed text in draft tokens
        self._synced = 0  # target tokens already translated into _dtokens

    def fresh(self) -> TextBridge:
        return TextBridge(self.target_tok, self.draft_tok)

    def to_draft(self, tokens: list[int]) -> list[int]:
        """The committed context ``tokens`` in draft token ids."""
        new = tokens[self._synced :]
        if new:
            text = self.target_tok.decode(new, skip_special_tokens=False)
            if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                self._dtokens.extend(self.draft_tok.encode(text, add_special_tokens=False))
                self._synced = len(tokens)
        return self._dtokens or [self.draft_tok.eos_token_id or 0]

    def to_target(self, draft_ids: list[int], max_depth: int) -> list[int]:
        """The draft's continuation ``draft_ids`` in target token ids, at most ``max_depth``."""
        text = self.draft_tok.decode(draft_ids, skip_special_tokens=True)
        ids = self.target_tok.encode(text, add_special_tokens=False)
        # The last token may be a word cut short by the draft's own boundaries: leave it out.
        return ids[: max(0, min(len(ids) - 1, max_depth))] if len(ids) > 1 else ids[:max_depth]
