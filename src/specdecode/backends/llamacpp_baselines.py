"""llama.cpp's own decoding as ``bench`` baselines, on the same GGUF file as ``--backend llama.cpp``:

- ``llama-ar``: plain greedy decoding, llama-cpp-python's ``Llama.generate`` (one token per
  forward; its sampler with temperature 0 is an argmax);
- ``llama-pld``: the same with its prompt lookup decoding as the draft model
  (``LlamaPromptLookupDecoding``: the continuation of the last n-gram's earlier occurrence,
  ``num_pred_tokens`` at a time, verified greedily).

Both run with the backend's context size, batch size, thread count and attention settings,
and each run starts from an empty KV cache (no prompt reuse between runs), as the engine's do.
The tokens each forward committed are read from the cache length before each forward, as the
transformers baselines do (:func:`specdecode.bench.baselines.committed_per_forward`).
"""

from __future__ import annotations

import contextlib
import logging
import threading

from specdecode.backends import backend_of
from specdecode.errors import SpecDecodeError

_PATCH_LOCK = threading.Lock()


class LlamaCppBaseline:
    """llama-cpp-python's ``Llama.generate``, greedy, optionally with prompt lookup decoding."""

    def __init__(self, name: str, loaded, *, prompt_lookup: dict | None = None) -> None:
        if backend_of(loaded) != "llama.cpp":
            raise SpecDecodeError(
                f"{name} is llama.cpp's own decoding of a GGUF file: run the bench with --backend llama.cpp"
            )
        from specdecode.backends.llamacpp import N_BATCH, llama_cpp_module

        llama_cpp_module()
        from llama_cpp import Llama, _logger
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.name = name
        self.eos = set(loaded.eos_token_ids)
        if not self.eos:
            raise SpecDecodeError(f"{loaded.name} has no end-of-sequence token; {name} cannot stop on it")
        draft = LlamaPromptLookupDecoding(**prompt_lookup) if prompt_lookup is not None else None
        try:
            with _our_model_params():
                self.llm = Llama(
                    model_path=str(loaded.path), n_ctx=loaded.n_ctx, n_batch=N_BATCH, n_ubatch=N_BATCH,
                    n_threads=loaded.n_threads, n_threads_batch=loaded.n_threads, n_gpu_layers=0,
                    flash_attn=loaded.flash_attn, draft_model=draft, verbose=False,
                    # with a draft model it keeps every row's logits, but sizes their buffer for
                    # n_ctx rows only when asked here (else n_batch: a longer prompt overflows it)
                    logits_all=draft is not None,
                )  # fmt: skip
        except Exception as e:
            raise SpecDecodeError(f"{name}: llama-cpp-python could not load {loaded.path}: {e}") from None
        _logger.logger.setLevel(logging.CRITICAL)  # Llama() set its own level
        self._lengths: list[int] = []
        evaluate = self.llm.eval

        def counting_eval(tokens):
            self._lengths.append(self.llm.n_tokens)  # cached tokens before this forward
            return evaluate(tokens)

        self.llm.eval = counting_eval

    def generate_ids(self, prompt_ids: list[int], *, max_new_tokens: int, sampling):
        from specdecode.bench.baselines import RunOutput, committed_per_forward

        if not sampling.greedy:
            raise SpecDecodeError(f"{self.name} runs greedy decoding only: use --temperature 0")
        self.llm.reset()  # an empty cache: no reuse of an earlier run's prompt
        self._lengths = []
        out: list[int] = []
        finish = "length"
        steps = self.llm.generate(list(prompt_ids), temp=0.0, repeat_penalty=1.0, reset=True)
        try:
            for token in steps:
                out.append(int(token))
                if out[-1] in self.eos:
                    finish = "eos"
                    break
                if len(out) >= max_new_tokens:
                    break
        finally:
            steps.close()
        per_forward = committed_per_forward(self._lengths, len(prompt_ids), len(prompt_ids) + len(out))
        lengths = per_forward[1:] if per_forward and all(n >= 1 for n in per_forward) else None
        return RunOutput(out, lengths, finish)


@contextlib.contextmanager
def _our_model_params():
    """``Llama()`` loading with the backend's model parameters
    (:func:`specdecode.backends.llamacpp.model_params`): llama-cpp-python's ``Llama`` takes
    them from ``llama_model_default_params()`` and has no argument for the extra buffer types."""
    import llama_cpp.llama_cpp as low

    from specdecode.backends.llamacpp import model_params

    with _PATCH_LOCK:
        default = low.llama_model_default_params
        low.llama_model_default_params = lambda: model_params()
        try:
            yield
        finally:
            low.llama_model_default_params = default


def llama_factory(name: str, *, lookup: bool):
    def factory(ctx, **options):
        return LlamaCppBaseline(name, ctx.target, prompt_lookup=options if lookup else None)

    return factory
