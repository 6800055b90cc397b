"""Adaptive weighted rejection sampling (AWRS) and sequential Monte Carlo under a constraint.

Lipkin et al., "Fast Controlled Generation from Language Models with Adaptive Weighted
Rejection Sampling" (COLM 2025, arXiv 2504.05410).

**What the mask samples from.** ``constraint_sampling="mask"`` (the engine's
:class:`~specdecode.constraints.guide.Guide`) draws each token from the locally masked
distribution ``p(x | prefix) [x allowed] / Z(prefix)``, where
``Z(prefix) = sum of p over the allowed tokens``. The product of these conditionals is *not*
the global constrained distribution ``p(y | y satisfies the grammar)``: a prefix the grammar
allows but whose continuations the model finds unlikely (small ``Z`` later) is kept at its
full unconstrained probability. The global distribution weights each sequence by the product
of its ``Z``'s relative to the others.

**AWRS, one token** (:func:`awrs_draw`). Tokens are drawn from the *unmasked* ``p`` without
replacement (inverse-CDF draws, a rejected token skipped); each drawn token is checked with
the grammar alone (llguidance's per-token check, no vocabulary mask); a rejected token is
removed and the next one drawn. The first accepted token ``x`` follows the masked distribution exactly. The
weight is the estimate ``W = p(x) + c(y) * (1 - R - p(x))`` of ``Z``, where ``R`` is the mass
of the rejected tokens and ``y`` is one more token drawn from what is left (``c(y)`` its
check): every rejected token is known not to count, ``x`` counts fully, and the rest is
estimated from a single draw. So ``E[W | x, the tokens rejected before it] = Z``: the
estimate is unbiased whatever token was accepted (the paper's recursive estimator with its
coin-flip tail; ``R`` telescopes the product of its ``1 - q`` factors), which makes
``(x, W)`` properly weighted for ``p(x) [x allowed]``. It costs one check more than the draw.
Where the model puts little mass on the allowed tokens (a key the schema forces that the model
would not write) rejection could take thousands of checks: after :data:`MAX_REJECTS`
rejections the full mask finishes the draw exactly (the token from what is left, restricted
to the mask; ``Z`` then computed, not estimated), so a token costs at most that many checks
and one mask. The rule looks only at what was drawn before, so the draw stays exact and the
weight unbiased.

**SMC over K particles** (:func:`smc`). Each particle is extended one token at a time by
AWRS, its weight multiplied by ``W``; when the effective sample size ``(sum w)^2 / sum w^2``
falls below ``K / 2`` the particles are resampled (multinomially, weights then equal). The
answer is one particle drawn by weight among those that ended with EOS. A particle's weight
is an unbiased estimate of ``prod Z`` along its path, the ratio of the global constrained
probability of its sequence to the probability the locally masked sampler gave it, so the
answer's distribution approaches ``p(y | y satisfies the grammar)`` as K grows (within
``max_new_tokens``). With K = 1 there is nothing to weigh: AWRS alone samples exactly what
``mask`` samples, with a few grammar checks per token instead of a vocabulary mask.

This first version decodes without speculation: one target forward per token, the K
particles batched in one forward.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from dataclasses import dataclass

import torch

from specdecode.errors import SpecDecodeError

CONSTRAINT_SAMPLINGS = ("mask", "awrs")
MAX_PARTICLES = 1024
ESS_THRESHOLD = 0.5  # resample when the effective sample size falls below this share of K
MAX_REJECTS = 16  # rejections before the full mask finishes a draw (see awrs_draw)


def check_options(
    constraint_sampling: str,
    particles,
    *,
    constrained: bool,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    method: str = "ar",
    prediction=None,
    flags: bool = False,
) -> None:
    """The checks of ``constraint_sampling`` and ``particles`` that need no model.
    ``flags``: name them as the CLI options. Raises :class:`SpecDecodeError` (one line)."""
    cs, k = ("--constraint-sampling", "--particles") if flags else ("constraint_sampling", "particles")
    if constraint_sampling not in CONSTRAINT_SAMPLINGS:
        raise SpecDecodeError(f"{cs} must be mask or awrs, got {constraint_sampling!r}")
    if not isinstance(particles, numbers.Integral) or isinstance(particles, bool):
        raise SpecDecodeError(f"{k} must be a whole number >= 1, got {particles!r}")
    if not 1 <= particles <= MAX_PARTICLES:
        raise SpecDecodeError(f"{k} must be from 1 to {MAX_PARTICLES}, got {particles}")
    if constraint_sampling == "mask":
        if particles != 1:
            raise SpecDecodeError(f"{k} {particles} needs {cs} awrs (mask sampling has no particles)")
        return
    if not constrained:
        raise SpecDecodeError(
            f"{cs} awrs samples under a constraint: give a JSON schema, a regex or a grammar"
        )
    if temperature == 0:
        raise SpecDecodeError(
            f"{cs} awrs samples: give a temperature > 0 (greedy decoding under a constraint is "
            "the masked argmax, which mask gives)"
        )
    if top_k or top_p != 1.0:
        raise SpecDecodeError(
            f"{cs} awrs samples at a temperature only: top-k and top-p would cut the unmasked "
            "distribution, not the masked one that mask cuts; leave them off"
        )
    if method != "ar":
        raise SpecDecodeError(
            f"{cs} awrs decodes without speculation for now (one forward per token, the particles "
            f"batched): leave the method as ar, not {method!r}"
        )
    if prediction:
        raise SpecDecodeError(f"{cs} awrs decodes without speculation: a prediction cannot be used with it")


# ---- one token ------------------------------------------------------------------------------
@dataclass
class Draw:
    token: int | None  # None: every token with probability > 0 was rejected (a dead end)
    weight: float  # the estimate of Z (0 at a dead end; nan when drawn unweighted)
    checks: int  # grammar checks of single tokens
    masked: bool = False  # the full mask was computed (after MAX_REJECTS rejections)


class _Urn:
    """Draws from ``probs`` ``[vocab]`` with some tokens removed: inverse-CDF draws from the
    current table, a removed token skipped (a fresh draw from what is left: drawing with
    replacement and skipping removed tokens is drawing without them); the table is rebuilt
    without them once they hold half of its mass."""

    BATCH = 8  # uniforms drawn at a time

    def __init__(self, probs: torch.Tensor, gen: torch.Generator) -> None:
        self.probs = probs.double()  # [vocab]
        self.gen = gen
        self.removed: dict[int, float] = {}  # token -> its mass
        self._build()
        self.total0 = self.total  # the mass of every token (1 up to rounding)
        self._queue: list[int] = []

    def _build(self) -> None:
        p = self.probs
        if self.removed:
            p = p.clone()
            p[list(self.removed)] = 0.0
        self.cdf = p.cumsum(0)  # [vocab]
        self.total = float(self.cdf[-1])
        self.in_table = 0.0  # removed mass still in this table (none: it was zeroed)
        self._queue = []

    @property
    def left(self) -> float:
        """The mass not removed."""
        return self.total - self.in_table

    def remove(self, token: int) -> None:
        self.removed[token] = float(self.probs[token])
        self.in_table += self.removed[token]
        if self.in_table > 0.5 * self.total:
            self._build()

    def draw(self) -> int | None:
        """A token from what is left; None when nothing with mass is left."""
        while True:
            if self.left <= 0.0 or self.total <= 0.0:
                return None
            if not self._queue:
                u = torch.rand(self.BATCH, generator=self.gen, dtype=torch.float64) * self.total
                idx = torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.cdf.shape[0] - 1)
                self._queue = idx.tolist()[::-1]
            t = self._queue.pop()
            if t not in self.removed:  # (a token of mass 0 has an empty interval: never drawn)
                return t


def awrs_draw(
    probs: torch.Tensor, allowed, gen: torch.Generator, weighted: bool = True, mask=None,
    max_rejects: int | None = None,
) -> Draw:  # fmt: skip
    """One token from ``probs`` ``[vocab]`` restricted to the tokens ``allowed(token) -> bool``
    accepts, by adaptive rejection; with ``weighted``, also the unbiased estimate of
    ``Z = sum of probs over the allowed tokens`` (see the module docstring).

    ``mask() -> bool [vocab]``: after ``max_rejects`` rejections (default
    :data:`MAX_REJECTS`) the full mask finishes the draw exactly (the next token from what is
    left, restricted to the mask, and Z computed): a state where the model puts little mass on
    the allowed tokens costs a bounded number of checks and one mask.
    """
    max_rejects = MAX_REJECTS if max_rejects is None else max_rejects
    urn = _Urn(probs, gen)
    checks = 0
    while (x := urn.draw()) is not None:
        if mask is not None and checks >= max_rejects:
            return _masked_draw(urn, mask(), checks, weighted)
        checks += 1
        if allowed(x):
            if not weighted:
                return Draw(x, math.nan, checks)
            px = float(urn.probs[x])
            urn.remove(x)
            y = urn.draw()  # a sample from what is left
            if y is None:  # x was the last token with mass: Z is known exactly
                return Draw(x, px / urn.total0, checks)
            checks += 1
            rest = max(0.0, urn.left)
            return Draw(x, (px + rest * allowed(y)) / urn.total0, checks)
        urn.remove(x)
    return Draw(None, 0.0, checks)


def _masked_draw(urn: _Urn, allowed: torch.Tensor, checks: int, weighted: bool) -> Draw:
    keep = torch.zeros(urn.probs.shape[0], dtype=torch.bool)
    n = min(keep.shape[0], allowed.shape[0])
    keep[:n] = allowed[:n].to("cpu")
    p = urn.probs * keep  # the rejected tokens are not allowed: nothing of theirs is left here
    cdf = p.cumsum(0)
    z = float(cdf[-1])
    if z <= 0.0:
        return Draw(None, 0.0, checks, True)
    u = torch.rand(1, generator=urn.gen, dtype=torch.float64) * z
    x = int(torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[0] - 1))
    return Draw(x, z / urn.total0 if weighted else math.nan, checks, True)


def allows(guide, token: int) -> bool:
    """The grammar's check of one token at ``guide``'s state (EOS only where it may end)."""
    return token < guide.vocab and guide.allows(token)


# ---- sequential Monte Carlo -----------------------------------------------------------------
@dataclass
class SmcOutcome:
    token_ids: list[int]  # the answer (EOS included when it ended so)
    finish_reason: str  # "eos", "length" or "constraint" (every particle reached a dead end)
    forwards: int  # target forwards after the prefill (each scores all particles at once)
    tokens_drawn: int  # tokens drawn by AWRS, all particles together
    checks: int  # grammar checks of single tokens, all particles together
    masks: int  # full masks computed (draws that reached MAX_REJECTS rejections)
    resamples: int
    # log of the unbiased estimate of P(valid and ended within the limit) under p (nan when K = 1)
    log_evidence: float


class _Rows:
    """K copies of one sequence in one batched KV cache: prefill once, then a token per row."""

    def __init__(self, loaded, prompt: list[int], k: int) -> None:
        from specdecode.kvcache import kv_cache

        self.model, self.device = loaded.model, loaded.device
        self.cache = kv_cache(self.model)
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)  # [1, len(prompt)]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **self.cache.kwargs)
        self.cache.hf_cache.batch_repeat_interleave(k)
        self.first = out.logits[0, -1].float().expand(k, -1)  # [k, vocab_size]

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row; returns ``[k, vocab_size]``."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # [k, 1]
        out = self.model(input_ids=ids, use_cache=True, **self.cache.kwargs)
        return out.logits[:, -1].float()

    def select(self, rows: torch.Tensor) -> None:
        self.cache.hf_cache.reorder_cache(rows.to(self.device))


def _fork(guide):
    twin = copy.copy(guide)
    twin.matcher = guide.matcher.deep_copy()
    return twin


def _log_mean_exp(values: list[float]) -> float:
    top = max(values)
    if top == float("-inf"):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


@torch.inference_mode()
def smc(loaded, prompt_ids: list[int], constraint, sampling, limit: int, particles: int) -> SmcOutcome:
    """At most ``limit`` new tokens under ``constraint`` by SMC with ``particles`` AWRS particles
    (``particles=1``: AWRS alone, unweighted). ``sampling``: a temperature, no top-k/top-p."""
    if getattr(loaded, "backend", "transformers") != "transformers":
        raise SpecDecodeError("constraint sampling awrs runs on the transformers backend only")
    k = particles
    weighted = k > 1
    gen = sampling.generator(torch.device("cpu"))
    eos = loaded.eos_token_ids
    first = constraint.guide(loaded, sampling)
    guides = [first] + [_fork(first) for _ in range(k - 1)]
    rows = _Rows(loaded, list(prompt_ids), k)
    logits = rows.first
    out: list[list[int]] = [[] for _ in range(k)]
    done: list[str | None] = [None] * k
    logw = [0.0] * k
    forwards = drawn = checks = masks = resamples = 0
    for step in range(limit):
        live = [i for i in range(k) if done[i] is None]
        probs = (logits[live].cpu() / sampling.temperature).softmax(-1)  # [live, vocab]
        for r, i in enumerate(live):
            g = guides[i]
            d = awrs_draw(probs[r], lambda t, g=g: allows(g, t), gen, weighted, mask=g.allowed)
            drawn, checks, masks = drawn + 1, checks + d.checks, masks + d.masked
            if d.token is None:
                done[i], logw[i] = "constraint", float("-inf")
                continue
            out[i].append(d.token)
            if weighted:
                logw[i] += math.log(d.weight)
            if d.token in eos:
                done[i] = "eos"
            elif not g.matcher.consume_token(d.token):  # cannot happen for an accepted token
                done[i], logw[i] = "constraint", float("-inf")
        if all(done) or step + 1 == limit:
            break
        if weighted and _ess(logw) < ESS_THRESHOLD * k:
            pick = _resample(logw, k, gen)
            rows.select(pick)
            idx = pick.tolist()
            out = [list(out[j]) for j in idx]
            done = [done[j] for j in idx]
            guides = [_fork(guides[j]) for j in idx]
            logw = [_log_mean_exp(logw)] * k
            resamples += 1
        logits = rows.step([o[-1] if o else 0 for o in out])
        forwards += 1
    ended_w = [w if d == "eos" else float("-inf") for w, d in zip(logw, done, strict=True)]
    evidence = _log_mean_exp(ended_w) if weighted else math.nan
    ended = [i for i in range(k) if done[i] == "eos"]
    alive = [i for i in range(k) if done[i] in (None, "eos")]
    pool = ended or alive
    if not pool:
        return SmcOutcome(out[0], "constraint", forwards, drawn, checks, masks, resamples, evidence)
    if weighted and len(pool) > 1:
        w = torch.tensor([logw[i] for i in pool], dtype=torch.float64).softmax(0)
        chosen = pool[int(torch.multinomial(w, 1, generator=gen))]
    else:
        chosen = pool[0]
    finish = "eos" if done[chosen] == "eos" else "length"
    return SmcOutcome(out[chosen], finish, forwards, drawn, checks, masks, resamples, evidence)


def _ess(logw: list[float]) -> float:
    w = torch.tensor(logw, dtype=torch.float64)
    if not torch.isfinite(w).any():
        return float(len(logw))  # nothing to choose between: resampling cannot help
    w = (w - w.max()).exp()
    return float(w.sum() ** 2 / (w * w).sum())


def _resample(logw: list[float], k: int, gen: torch.Generator) -> torch.Tensor:
    w = torch.tensor(logw, dtype=torch.float64).softmax(0)
    return torch.multinomial(w, k, replacement=True, generator=gen)  # [k] rows kept


# ---- the decoder's view ---------------------------------------------------------------------
def generate(decoder, prompt_ids, *, max_new_tokens, sampling, constraint, particles=1, stop=None):
    """:meth:`specdecode.engine.Decoder.generate_ids` with constraint sampling ``awrs``."""
    from specdecode.engine import GenerationResult, _stop_at

    limit = decoder._check(prompt_ids, max_new_tokens)
    start = time.perf_counter()
    o = smc(decoder.loaded, prompt_ids, constraint, sampling, limit, particles)
    seconds = time.perf_counter() - start
    text = decoder.loaded.tokenizer.decode(o.token_ids, skip_special_tokens=True)
    finish = o.finish_reason
    cut = _stop_at(text, stop or [])
    if cut >= 0:
        text, finish = text[:cut], "stop"
    n = len(o.token_ids)
    return GenerationResult(
        text=text,
        token_ids=o.token_ids,
        new_tokens=n,
        seconds=seconds,
        tokens_per_second=n / seconds if seconds > 0 else 0.0,
        method=decoder.method,
        steps=o.forwards,
        mean_accepted=1.0,
        accepted_lengths=[1] * o.forwards,
        finish_reason=finish,
        prompt_tokens=len(prompt_ids),
        method_ran="awrs" if particles == 1 else f"awrs-smc-{particles}",
    )


def stream(decoder, prompt_ids, **kwargs):
    """The answer as one :class:`~specdecode.engine.Response` (SMC chooses it at the end)."""
    from specdecode.engine import Response

    r = generate(decoder, prompt_ids, **kwargs)
    yield Response(r.text, r.token_ids, r.finish_reason)
