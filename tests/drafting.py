"""Shared pieces of the train-free drafters' tests (aded, recycling, hybrid)."""

from specdecode.engine import build_decoder

PROMPTS = [
    [3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5],
    [10, 11, 12, 13, 14, 15, 10, 11, 12],
    [40, 2, 9],
]


def spy(decoder, *, distinct_siblings: bool = True):
    """Record every tree the decoder's drafter proposes, checking depth (and that no two
    siblings hold the same token)."""
    trees = []
    propose = decoder.drafter.propose

    def wrapped(tokens, max_depth):
        tree = propose(tokens, max_depth)
        trees.append(tree)
        assert len(tree) == 0 or max(tree.depths()) <= max_depth
        if distinct_siblings:
            for node in range(-1, len(tree)):
                kids = [tree.tokens[c] for c in tree.children(node)]
                assert len(kids) == len(set(kids))
        return tree

    decoder.drafter.propose = wrapped
    return trees


def check_greedy_equals_ar(lm, method: str, options: dict, min_accepted: float = 1.05) -> list:
    """``method`` reproduces ``ar`` on every prompt, accepts drafts, branches, and keeps to a
    fixed budget when given one; returns the proposed trees."""
    ar = build_decoder("ar", lm)
    decoder = build_decoder(method, lm, options=options)
    trees = spy(decoder)
    accepted = []
    for prompt in PROMPTS:
        want = ar.generate_ids(prompt, max_new_tokens=48).token_ids
        got = decoder.generate_ids(prompt, max_new_tokens=48)
        assert got.token_ids == want
        accepted.append(got.mean_accepted)
    assert max(accepted) > min_accepted  # drafts are accepted
    assert any(len(t) and not t.is_chain for t in trees)  # trees branch
    if options.get("budget"):
        assert max(len(t) for t in trees) == options["budget"]
    return trees


def check_equals_ar(lm, method: str, options: dict, prompts=PROMPTS, tokens: int = 40):
    """``method`` reproduces ``ar`` token for token on every prompt; returns the decoder, the
    trees it proposed and its results."""
    ar = build_decoder("ar", lm)
    decoder = build_decoder(method, lm, options=options)
    trees = spy(decoder)
    results = []
    for prompt in prompts:
        got = decoder.generate_ids(prompt, max_new_tokens=tokens)
        assert got.token_ids == ar.generate_ids(prompt, max_new_tokens=tokens).token_ids
        results.append(got)
    return decoder, trees, results
