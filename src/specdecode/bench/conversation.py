"""Conversations for ``bench --turns``: the input of turn ``k`` is the user's turns so far with
the model's own answers to the earlier ones in between.

With a chat template the messages go through it (the assistant turn opened at the end), as a
chat client would send them. Without one (or with ``raw``), the text is the turns and answers
joined by blank lines, each answer as the model wrote it (its token ids, not re-encoded text).
"""

from __future__ import annotations

from specdecode.errors import SpecDecodeError
from specdecode.models.quiet import one_line

RAW_SEPARATOR = "\n\n"


def answer_text(loaded, answer_ids: list[int]) -> str:
    """What an answer says: its tokens up to the first end-of-sequence token, decoded."""
    eos = loaded.eos_token_ids
    cut = next((i for i, t in enumerate(answer_ids) if t in eos), len(answer_ids))
    return loaded.tokenizer.decode(answer_ids[:cut], skip_special_tokens=True)


def encode_turn(
    loaded, user_turns: list[str], answers: list[list[int]], first_ids: list[int], *, raw: bool
) -> list[int]:
    """Token ids for the next turn: ``user_turns[k]`` after the earlier turns and ``answers``
    (the model's token ids for each earlier turn, ``len(answers) == k``). ``first_ids``: the
    first turn as encoded alone (``loaded.encode_prompt``), returned as is for turn 1."""
    k = len(answers)
    if not 0 <= k < len(user_turns):
        raise ValueError(f"turn {k + 1} of a conversation of {len(user_turns)} turns")
    if k == 0:
        return list(first_ids)
    tok = loaded.tokenizer
    if not raw and getattr(tok, "chat_template", None):
        messages = []
        for user, ids in zip(user_turns, answers, strict=False):
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer_text(loaded, ids)},
            ]
        messages.append({"role": "user", "content": user_turns[k]})
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template that accepts one user turn only
            raise SpecDecodeError(
                f"the chat template of {loaded.name} cannot hold a conversation ({one_line(e)}); "
                "run --turns 1 or --raw"
            ) from None
        return [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    eos = loaded.eos_token_ids
    ids = list(first_ids)
    for j in range(k):
        ans = answers[j]
        ids += [t for t in ans[: next((i for i, t in enumerate(ans) if t in eos), len(ans))]]
        ids += tok(RAW_SEPARATOR + user_turns[j + 1] + RAW_SEPARATOR, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]
