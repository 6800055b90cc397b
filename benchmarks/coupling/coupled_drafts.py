"""What draft-model would accept under the Gumbel coupling if it drew its drafts with the same
noise as the verifier (Daliri et al. 2024's drafter-invariant speculative decoding).

Today ``draft-model`` draws each draft token from q with a generator of its own, independent
of the Gumbel noise; under ``--coupling gumbel`` a draft token is accepted only when it equals
``argmax(log p + g_t)``, so a token drawn independently from q is accepted with probability
``sum_x q(x) p(x)``. Drawing it as ``argmax(log q + g_t)`` with the verifier's own ``g_t`` (the
noise of its sequence position ``t``, keyed by the seed) makes the two choices agree with
probability at least ``(1 - TV(p, q)) / (1 + TV(p, q))``. The text is unchanged: under the
coupling it is ``ar``'s whatever is drafted.

This script swaps draft-model's ``propose`` for one that draws so (nothing in the library is
changed), then runs ``specdecode bench`` in this process with the arguments given, e.g.:

    python benchmarks/coupling/coupled_drafts.py --dataset spec-bench --n-per-category 1 \\
        --max-new-tokens 128 --methods draft-model --draft default --temperature 0.7 --seed 0 \\
        --coupling gumbel --warmup 0 --no-plots --no-progress --threads 1 --out coupled.json
"""

from __future__ import annotations

import sys

import torch

from specdecode.cli import main
from specdecode.drafters.draft_model import DraftModel
from specdecode.sampling import GumbelNoise
from specdecode.tree import DraftTree

_propose = DraftModel.propose


def coupled_propose(self, tokens: list[int], max_depth: int) -> DraftTree:
    """DraftModel.propose with each draft token drawn as argmax(log q + g_t) under the coupling."""
    s = self.sampling
    if not s.gumbel or s.seed is None or not self.bridge.exact:
        return _propose(self, tokens, max_depth)
    noise = GumbelNoise(s.seed, self.ctx.draft.device)
    logits = self.lm.sync(tokens)  # [vocab_size]
    out: list[int] = []
    self._conf = []
    while True:
        q = self._probs(logits)  # [vocab_size]
        # the token at sequence position len(tokens) + len(out): the verifier's noise there
        x = int((q.log() + noise.at(len(tokens) + len(out), q.shape[-1])).argmax())
        conf = float(q.max())
        if out and conf < self.stop.value:
            break
        out.append(x)
        self._conf.append(conf)
        if len(out) >= min(self.max_draft, max_depth):
            break
        logits = self.lm.extend(out, list(range(-1, len(out) - 1)))[0]
    self.lm.drop_tree()
    return DraftTree.chain(out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    DraftModel.propose = coupled_propose
    sys.exit(main(["bench", *sys.argv[1:]]))
