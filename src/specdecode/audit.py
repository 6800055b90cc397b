"""Does a method give what the target gives, on *this* model? The checks behind ``specdecode audit``.

The project checks every method on tiny models built in code; a user's model, dtype and
device are other ground. The audit runs the same two checks there:

1. **Greedy identity.** Each prompt is decoded greedily by ``ar`` (the reference) and by the
   method. An output is *identical*, a *near-tie* (the first differing token is one where the
   target's top logit and the lower of the two outputs' choices are within a tolerance, the
   benchmark's classification: a tree's forward and a single token's agree to about 1e-5, so
   such a token may flip), or *different* (a real error).
2. **Sampling distribution.** The method samples the first ``tokens`` new tokens of one
   prompt many times (a seed per sample, residual coupling by default: speculative sampling
   as in the papers). Two tests compare the samples with the target's exact distribution,
   computed by plain forwards of the model (no KV cache, no tree mask, no verifier):

   - *first tokens*: the joint distribution of the first :data:`JOINT_TOKENS` tokens (the
     engine's first token comes from the prefill; the first speculative step makes tokens 2
     and 3), by Pearson's chi-square on a partition of the outcomes defined by the target
     alone (:class:`specdecode.lossless.PrefixCells`: likely prefixes expanded, the rest
     pooled), so the counts are multinomial with known probabilities;
   - *every position*: each sampled token's randomized probability integral transform under
     the target's distribution given the sample's own prefix (one forward per sample), which
     is independent and uniform for every token of every sample exactly when the samples
     follow the target; Pearson's chi-square on equal bins tests that.

   The check's p-value is the smaller one, doubled (Bonferroni); under a lossless method it is
   at most as often below ``alpha`` as ``alpha`` says.

A method passes when no greedy output is really different and the p-value is at least
``alpha``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field

import torch

from specdecode.errors import SpecDecodeError
from specdecode.lossless import PrefixCells, model_next_probs, pit_values, uniformity
from specdecode.sampling import SamplingConfig, target_probs

# Samples are spaced two seeds apart: draft-model, dyspec and sjd seed their own draws with
# ``seed + 1``, and no generator of one sample may replay another sample's.
SEED_STRIDE = 2
# The last sampled tokens are drafted as deep as in a longer generation: this much more room.
EXTRA_ROOM = 16
JOINT_TOKENS = 3  # the first-tokens test: the joint of new tokens 1-3


@dataclass(frozen=True)
class AuditConfig:
    max_new_tokens: int = 64  # greedy check: new tokens per prompt
    samples: int = 200  # sampling check: samples of the first tokens (0: no sampling check)
    tokens: int = 16  # sampling check: new tokens per sample (token 1 is the prefill's)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    coupling: str = "residual"  # "residual" (the papers' speculative sampling) or "gumbel"
    seed: int = 0  # sample i uses seed + SEED_STRIDE * i
    alpha: float = 1e-3  # the sampling check fails below this p-value
    tie_tolerance: float | None = None  # None: the benchmark's default for the target's dtype
    min_expected: float = 5.0  # chi-square cells expected fewer times are pooled

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SpecDecodeError(f"max new tokens must be >= 1, got {self.max_new_tokens}")
        if self.samples < 0:
            raise SpecDecodeError(f"samples must be >= 0 (0: no sampling check), got {self.samples}")
        if self.tokens < 2:
            raise SpecDecodeError(f"tokens must be >= 2 (token 1 comes from the prefill), got {self.tokens}")
        if not 0 < self.alpha < 1:
            raise SpecDecodeError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.coupling not in ("residual", "gumbel"):
            raise SpecDecodeError(f"coupling must be residual or gumbel, got {self.coupling!r}")
        if self.temperature == 0 and self.samples:
            raise SpecDecodeError("the sampling check needs a temperature > 0 (or samples = 0)")
        # the library's own checks on temperature, top-k, top-p and the seeds of the samples
        self.sampling(max(self.samples - 1, 0))

    def sampling(self, i: int) -> SamplingConfig:
        """The sampling settings of sample ``i``."""
        return SamplingConfig(
            self.temperature, self.top_k, self.top_p, seed=self.seed + SEED_STRIDE * i, coupling=self.coupling
        )


@dataclass
class AuditPrompt:
    id: str
    ids: list[int]  # token ids, chat template applied as the user asked


@dataclass
class GreedyCase:
    prompt_id: str
    status: str  # "identical" | "near-tie" | "different"
    first_difference: int | None = None  # index of the first differing new token
    tie_gap: float | None = None  # top logit minus the lower of the two choices there


@dataclass
class SamplingCheck:
    prompt_id: str
    samples: int
    tokens: int
    coupling: str
    pvalue: float  # the smaller of the two tests' p-values, doubled (at most 1)
    joint_pvalue: float  # first tokens: chi-square on the exact partition
    joint_statistic: float
    joint_df: int
    cells: int  # cells of the partition (before pooling the small ones)
    forwards: int  # prefixes whose exact next-token distribution was computed for it
    pit_pvalue: float  # every position: uniformity of the probability integral transforms
    pit_statistic: float
    pit_df: int
    drafted: float  # mean draft nodes scored per step (target forward after the prefill)
    accepted: float  # mean draft tokens accepted per step


@dataclass
class MethodAudit:
    method: str
    options: dict
    alpha: float
    greedy: list[GreedyCase] = field(default_factory=list)
    sampling: SamplingCheck | None = None
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.greedy)

    @property
    def greedy_ok(self) -> bool:
        return self.count("different") == 0

    @property
    def sampling_ok(self) -> bool:
        return self.sampling is None or self.sampling.pvalue >= self.alpha

    @property
    def verdict(self) -> str:
        return "PASS" if self.greedy_ok and self.sampling_ok else "FAIL"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["identical"] = self.count("identical")
        d["near_ties"] = self.count("near-tie")
        d["different"] = self.count("different")
        d["verdict"] = self.verdict
        return d


def greedy_outputs(decoder, prompts: list[AuditPrompt], max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy output (new token ids, EOS kept) from ``decoder``."""
    return [decoder.generate_ids(p.ids, max_new_tokens=max_new_tokens).token_ids for p in prompts]


def check_greedy(
    target, decoder, prompts: list[AuditPrompt], reference: list[list[int]], cfg: AuditConfig
) -> list[GreedyCase]:
    """Compare ``decoder``'s greedy outputs with ``reference`` (``ar``'s), prompt by prompt."""
    from specdecode.bench.measure import TIE_TOLERANCE, check_identity
    from specdecode.bench.metrics import PromptRecord

    tol = cfg.tie_tolerance if cfg.tie_tolerance is not None else TIE_TOLERANCE.get(target.dtype, 1e-3)
    cases = []
    outputs = greedy_outputs(decoder, prompts, cfg.max_new_tokens)
    for p, want, got in zip(prompts, reference, outputs, strict=True):
        ref, rec = (PromptRecord(p.id, "", "", len(p.ids), len(ids), 0.0, ids) for ids in (want, got))
        check_identity(target, p.ids, ref, rec, target.eos_token_ids, tol)
        status = "identical" if rec.identical_to_ar else "near-tie" if rec.near_tie else "different"
        cases.append(GreedyCase(p.id, status, rec.first_difference, rec.tie_gap))
    return cases


def sample_tokens(decoder, prompt: list[int], cfg: AuditConfig) -> tuple[list[list[int]], list]:
    """``cfg.samples`` draws of the first ``cfg.tokens`` new tokens; the ``(drafted, accepted)``
    of every step after the prefill."""
    outcomes, steps_seen = [], []
    for i in range(cfg.samples):
        tokens: list[int] = []
        steps = decoder.steps(prompt, cfg.sampling(i), cfg.tokens + EXTRA_ROOM)
        with closing(steps):
            for k, step in enumerate(steps):
                if k:
                    steps_seen.append((step.drafted, step.accepted))
                tokens.extend(step.tokens)
                if len(tokens) >= cfg.tokens:
                    break
        outcomes.append(tokens[: cfg.tokens])
    return outcomes, steps_seen


@torch.inference_mode()
def pit_test(target, prompt: list[int], outcomes: list[list[int]], cfg: AuditConfig, batch: int = 8):
    """Uniformity of every sampled token's probability integral transform under the target's
    distribution given the sample's prefix (plain forwards): ``(statistic, df, p-value)``."""
    sampling = cfg.sampling(0)
    gen = torch.Generator().manual_seed(cfg.seed)  # the transform's own randomization
    values: list[float] = []
    for i in range(0, len(outcomes), batch):
        chunk = outcomes[i : i + batch]
        ids = torch.tensor([prompt + o[:-1] for o in chunk], device=target.device)
        logits = target.model(input_ids=ids, logits_to_keep=cfg.tokens).logits  # [b, tokens, vocab]
        for o, rows in zip(chunk, logits, strict=True):
            u = pit_values(target_probs(rows.float(), sampling), o, gen)
            if u is None:
                return float("inf"), 0, 0.0
            values.extend(u)
    return uniformity(values)


def check_sampling(
    target, decoder, prompt: AuditPrompt, cfg: AuditConfig, cells: PrefixCells | None = None
) -> SamplingCheck:
    """Both tests of the method's samples against the target's exact distribution (``cells``:
    :func:`reference_cells` of the prompt, computed here when not given)."""
    outcomes, steps = sample_tokens(decoder, prompt.ids, cfg)
    cells = cells or reference_cells(target, prompt.ids, cfg)
    joint = cells.test(outcomes, cfg.min_expected)
    pit = pit_test(target, prompt.ids, outcomes, cfg)
    n = max(len(steps), 1)
    return SamplingCheck(
        prompt_id=prompt.id,
        samples=cfg.samples,
        tokens=cfg.tokens,
        coupling=cfg.coupling,
        pvalue=min(1.0, 2 * min(joint[2], pit[2])),
        joint_pvalue=joint[2],
        joint_statistic=joint[0],
        joint_df=joint[1],
        cells=len(cells.probs),
        forwards=cells.forwards,
        pit_pvalue=pit[2],
        pit_statistic=pit[0],
        pit_df=pit[1],
        drafted=sum(d for d, _ in steps) / n,
        accepted=sum(a for _, a in steps) / n,
    )


def reference_cells(target, prompt: list[int], cfg: AuditConfig) -> PrefixCells:
    """The partition of the sampling check for ``prompt`` (a function of the target alone)."""
    next_probs = model_next_probs(target, prompt, cfg.sampling(0))
    return PrefixCells(next_probs, cfg.samples, min(JOINT_TOKENS, cfg.tokens), cfg.min_expected)


def sampling_prompt(prompts: list[AuditPrompt]) -> AuditPrompt:
    """The prompt of the sampling check: the shortest (the check prefills it once per sample)."""
    return min(prompts, key=lambda p: len(p.ids))


def audit_method(
    method: str,
    target,
    prompts: list[AuditPrompt],
    reference: list[list[int]],
    cfg: AuditConfig,
    *,
    draft=None,
    options: dict | None = None,
    cells: PrefixCells | None = None,
) -> MethodAudit:
    """Both checks for ``method`` (its options validated by the registry); ``cells``: the
    sampling check's partition for :func:`sampling_prompt`, when computed already."""
    from specdecode.engine import build_decoder
    from specdecode.registry import get_method

    start = time.perf_counter()
    result = MethodAudit(method, dict(options or {}), cfg.alpha)
    draft = draft if get_method(method).needs_draft else None

    def decoder():  # one per check: drafters that learn across prompts start each check afresh
        return build_decoder(method, target, draft=draft, options=options)

    result.greedy = check_greedy(target, decoder(), prompts, reference, cfg)
    if cfg.samples:
        result.sampling = check_sampling(target, decoder(), sampling_prompt(prompts), cfg, cells)
    result.seconds = time.perf_counter() - start
    return result


def check_room(target, prompts: list[AuditPrompt], cfg: AuditConfig) -> None:
    """A SpecDecodeError naming the prompts too long for the checks in the model's context."""
    ctx = target.max_context
    if ctx is None:
        return
    need = max(cfg.max_new_tokens, cfg.tokens + EXTRA_ROOM if cfg.samples else 0)
    long = [f"{p.id} ({len(p.ids)} tokens)" for p in prompts if len(p.ids) + need > ctx]
    if long:
        raise SpecDecodeError(
            f"prompt + {need} new tokens exceeds the model's context of {ctx} for {', '.join(long[:5])}: "
            "lower --max-new-tokens or leave those prompts out"
        )


@torch.inference_mode()
def audit(
    target,
    methods: list[tuple[str, dict]],
    prompts: list[AuditPrompt],
    cfg: AuditConfig | None = None,
    *,
    draft=None,
    log: Callable[[str], None] | None = None,
) -> list[MethodAudit]:
    """Audit each ``(method, options)`` on ``target``; ``ar``'s greedy outputs are the reference."""
    from specdecode.engine import build_decoder

    cfg = cfg or AuditConfig()
    if not prompts:
        raise SpecDecodeError("the audit needs at least one prompt")
    log = log or (lambda _: None)
    check_room(target, prompts, cfg)
    log(f"reference: ar, greedy, {len(prompts)} prompts x {cfg.max_new_tokens} tokens")
    reference = greedy_outputs(build_decoder("ar", target), prompts, cfg.max_new_tokens)
    cells = None
    if cfg.samples:
        prompt = sampling_prompt(prompts)
        log(f"the target's distribution of the first tokens after prompt {prompt.id}")
        cells = reference_cells(target, prompt.ids, cfg)
    results = []
    for name, options in methods:
        log(f"auditing {name}")
        r = audit_method(name, target, prompts, reference, cfg, draft=draft, options=options, cells=cells)
        log(f"{name}: {r.verdict} ({r.seconds:.0f} s)")
        results.append(r)
    return results
