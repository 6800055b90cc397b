"""Baselines from plain transformers, measured in the same run as the project's methods.

- ``hf-ar``: ``model.generate()``, greedy (or sampling with the same settings);
- ``hf-pld``: its prompt lookup decoding (``prompt_lookup_num_tokens``);
- ``hf-assisted``: its assisted generation with ``--draft`` as the assistant (universal assisted
  decoding, ``tokenizer`` + ``assistant_tokenizer``, when the vocabularies differ);
- ``llama-ar``, ``llama-pld`` (with ``--backend llama.cpp``): llama.cpp's own greedy decoding
  of the same GGUF, plain and with its prompt lookup (:mod:`specdecode.backends.llamacpp_baselines`).
  On that backend the ``hf-*`` baselines run on the same weights loaded in transformers.

``generate()`` does not report its steps, so a forward pre-hook on the target model reads the
KV-cache length before each target forward; the tokens each forward committed follow from
consecutive lengths (see :func:`committed_per_forward`). The draft model's forwards are not
counted: the hook sits on the target only.

The generation config is explicit: the checkpoint's ``generation_config`` may carry sampling
settings or a repetition penalty, and a baseline must decode exactly as ``ar`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdecode.backends import transformers_twin
from specdecode.backends.llamacpp_baselines import llama_factory
from specdecode.errors import SpecDecodeError
from specdecode.registry import MethodSpec, Option


@dataclass
class RunOutput:
    """What one method produced on one prompt (timing and memory are measured by the runner)."""

    token_ids: list[int]  # new tokens only; EOS included when generation stopped on it
    accepted_lengths: list[int] | None  # per target forward after the prefill; None if unknown
    finish_reason: str | None = None
    phase_seconds: dict[str, float] | None = None  # engine methods: seconds per step phase


def committed_per_forward(cache_lengths: list[int], prompt_len: int, total_len: int) -> list[int]:
    """Tokens committed by each target forward, from the cache length seen before each one.

    Before forward ``k`` the cache holds every committed token except the newest (the root),
    so forward ``k`` committed ``L[k+1] - L[k]`` tokens; the prefill (``L[0] = 0``) committed
    ``L[1] - (prompt_len - 1)``; the last one ``total_len - 1 - L[-1]``, where ``total_len`` is
    prompt plus output. Returns one entry per forward, the prefill first.
    """
    if not cache_lengths:
        return []
    ends = [*cache_lengths[1:], total_len - 1]
    out = []
    for k, (start, end) in enumerate(zip(cache_lengths, ends, strict=True)):
        if k == 0:
            start = prompt_len - 1
        out.append(end - start)
    return out


class ForwardCounter:
    """Forward pre-hook recording the KV-cache length before each call of ``model``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.lengths: list[int] = []
        self._handle = None

    def __enter__(self) -> ForwardCounter:
        self.lengths = []
        self._handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        length = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            length = int(cache.get_seq_length())
        self.lengths.append(length)


class HFBaseline:
    """``transformers`` ``generate()`` with one of its decoding modes, greedy or sampling."""

    def __init__(self, name: str, loaded, *, draft=None, extra: dict | None = None) -> None:
        self.name = name
        self.loaded = loaded
        self.draft = draft
        self.extra = {k: v for k, v in (extra or {}).items() if v is not None}
        eos = sorted(loaded.eos_token_ids)
        if not eos:
            raise SpecDecodeError(f"{loaded.name} has no end-of-sequence token; {name} cannot stop on it")
        self.eos = eos
        tok = loaded.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        self.pad = int(pad) if pad is not None else eos[0]

    def generate_ids(
        self, prompt_ids: list[int], *, max_new_tokens: int, sampling, constraint=None
    ) -> RunOutput:
        model = self.loaded.model
        device = self.loaded.device
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        kwargs = dict(
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            do_sample=not sampling.greedy,
        )
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        kwargs.update(self.extra)
        if constraint is not None:  # a prompt's schema: its mask at every step (llguidance)
            from transformers import LogitsProcessorList

            from specdecode.constraints.hf import GrammarLogitsProcessor

            processor = GrammarLogitsProcessor(constraint, self.loaded.eos_token_ids)
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        if self.draft is not None:
            kwargs["assistant_model"] = self.draft.model
            if different_vocab(self.loaded, self.draft):
                kwargs["tokenizer"] = self.loaded.tokenizer
                kwargs["assistant_tokenizer"] = self.draft.tokenizer
        with ForwardCounter(model) as counter, torch.inference_mode():
            out = model.generate(input_ids, **kwargs)
        new = [int(t) for t in out[0, len(prompt_ids) :].tolist()]
        # generate() pads nothing for batch 1, but cut at the first EOS to be safe.
        finish = "length"
        for i, t in enumerate(new):
            if t in self.eos:
                new, finish = new[: i + 1], "eos"
                break
        lengths = None
        if self.draft is None or self.draft.model is not model:  # else the hook saw the draft's forwards too
            per_forward = committed_per_forward(counter.lengths, len(prompt_ids), len(prompt_ids) + len(new))
            if all(n >= 1 for n in per_forward):  # else the cache bookkeeping was not what we expect
                lengths = per_forward[1:]
        return RunOutput(new, lengths, finish)


def different_vocab(target, draft) -> bool:
    """Whether generate() treats the two as having different tokenizers (it compares vocab sizes)."""
    tv = target.model.config.get_text_config().vocab_size
    dv = draft.model.config.get_text_config().vocab_size
    return tv != dv


def check_bridgeable(target, draft) -> None:
    """Raise SpecDecodeError unless ``generate()`` can translate between the two tokenizers."""
    if not different_vocab(target, draft):
        return
    for lm, role in ((target, "target"), (draft, "draft")):
        tok = lm.tokenizer
        if not all(hasattr(tok, a) for a in ("decode", "convert_ids_to_tokens", "__call__", "get_vocab")):
            raise SpecDecodeError(
                f"hf-assisted: the {role} model {lm.name} has no Hugging Face tokenizer, so its tokens "
                "cannot be bridged to the other model's"
            )
        try:
            ids = tok("Hello world, 12 + 30 = 42.", add_special_tokens=False)["input_ids"]
            text = tok.decode(ids)
            again = tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        except Exception as e:  # a tokenizer that cannot round-trip text
            raise SpecDecodeError(
                f"hf-assisted: the {role} tokenizer ({lm.name}) cannot encode and decode text: {e}"
            ) from None
        # generate() bridges through text: decoding, re-encoding and decoding again must be stable.
        if not ids or not text or again != text:
            raise SpecDecodeError(
                f"hf-assisted: the {role} tokenizer ({lm.name}) does not round-trip text, so the draft's "
                "tokens cannot be bridged to the target's"
            )


def _positive(v) -> bool:
    return v is None or v >= 1


def probe(baseline: HFBaseline) -> None:
    """Generate a few tokens once, so that a draft generate() cannot work with fails now, clearly."""
    from specdecode.sampling import SamplingConfig

    ids = baseline.loaded.encode_prompt("Hello, how are you today?", raw=True)
    try:
        baseline.generate_ids(ids, max_new_tokens=4, sampling=SamplingConfig())
    except Exception as e:  # generate() fails in many ways with a tokenizer pair it cannot bridge
        msg = " ".join(str(e).split())[:200]
        raise SpecDecodeError(
            f"{baseline.name}: transformers cannot run {baseline.draft.name} as the assistant of "
            f"{baseline.loaded.name} ({type(e).__name__}: {msg}); the tokenizers cannot be bridged"
        ) from None


def _make(name: str, needs_draft: bool = False):
    def factory(ctx, **options):
        target = transformers_twin(ctx.target)  # the same weights in transformers on another backend
        draft = ctx.draft if needs_draft else None
        if draft is not None:
            check_bridgeable(target, draft)
        baseline = HFBaseline(name, target, draft=draft, extra=options)
        if draft is not None and different_vocab(target, draft):
            probe(baseline)
        return baseline

    return factory


BASELINES: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("hf-ar", "transformers generate(): plain decoding, the speedup baseline", _make("hf-ar")),
        MethodSpec(
            "hf-pld",
            "transformers generate() with prompt lookup decoding",
            _make("hf-pld"),
            {
                "prompt_lookup_num_tokens": Option(int, 10, "tokens proposed per step", _positive, ">= 1"),
                "max_matching_ngram_size": Option(
                    int, None, "longest n-gram matched (transformers' default: 2)", _positive, ">= 1"
                ),
            },
        ),
        MethodSpec(
            "hf-assisted",
            "transformers generate() with assisted generation, --draft as the assistant",
            _make("hf-assisted", needs_draft=True),
            {
                "num_assistant_tokens": Option(
                    int, None, "draft tokens per step (transformers' default: 20)", _positive, ">= 1"
                ),
                "num_assistant_tokens_schedule": Option(
                    str,
                    None,
                    "constant, heuristic or heuristic_transient (transformers' default: constant)",
                    lambda v: v in (None, "constant", "heuristic", "heuristic_transient"),
                    "constant, heuristic or heuristic_transient",
                ),
                "assistant_confidence_threshold": Option(
                    float,
                    None,
                    "stop drafting below this draft confidence (transformers' default: 0.4)",
                    lambda v: v is None or 0 <= v <= 1,
                    "in [0, 1]",
                ),
            },
            needs_draft=True,
        ),
        MethodSpec(
            "llama-ar",
            "llama.cpp's own greedy decoding of the GGUF (llama-cpp-python; --backend llama.cpp)",
            llama_factory("llama-ar", lookup=False),
        ),
        MethodSpec(
            "llama-pld",
            "llama.cpp's greedy decoding with its prompt lookup (LlamaPromptLookupDecoding; --backend llama.cpp)",
            llama_factory("llama-pld", lookup=True),
            {
                "num_pred_tokens": Option(int, 10, "tokens proposed per step", _positive, ">= 1"),
                "max_ngram_size": Option(int, 2, "longest n-gram matched", _positive, ">= 1"),
            },
        ),
    )
}


def is_baseline(name: str) -> bool:
    return name in BASELINES


def build_baseline(name: str, target, *, draft=None, options: dict | None = None) -> HFBaseline:
    """A baseline runner, options validated; SpecDecodeError for a missing or unbridgeable draft."""
    from specdecode.drafters.base import MethodContext
    from specdecode.models.pairing import check_draft
    from specdecode.registry import parse_options

    spec = BASELINES[name]
    # None is an option left at its default (transformers' own); the options may come here
    # already parsed, defaults included, and a None is no value of the option's type
    opts = parse_options(spec, {k: v for k, v in (options or {}).items() if v is not None})
    check_draft(spec, draft, target)
    return spec.factory(MethodContext(target, draft), **opts)
