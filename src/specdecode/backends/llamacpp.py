"""The llama.cpp backend: a GGUF file run by llama.cpp, through llama-cpp-python's low-level API.

:class:`LlamaCppModel` takes the place of :class:`specdecode.models.loader.LoadedModel`: the
same tokenizer (the Hugging Face one transformers builds from the GGUF, cached once per file),
the same EOS ids, ``device`` cpu. Its :meth:`~LlamaCppModel.new_target` gives a
:class:`LlamaCppTarget`, the same contract as :class:`specdecode.target.Target`, so every
drafter and the one verifier run unchanged on llama.cpp's forward.

A draft tree is scored in one ``llama_decode`` batch with llama.cpp's sequence ids:

- every leaf of the tree is a sequence; a node belongs to the sequences of the leaves below
  it, at position ``past + depth``. llama.cpp lets a token see exactly the cells that share
  its (first) sequence and sit at positions not after its own, which for a node are the
  committed tokens and its ancestors: the tree attention mask, with no mask of our own;
- the committed tokens belong to every sequence in use (sequences are added as trees need
  them, with ``llama_memory_seq_cp`` of the committed prefix), so each one starts right
  after them, as llama.cpp requires;
- commit keeps the accepted path: every other sequence is removed from the tree's cells
  beyond the root (``llama_memory_seq_rm``: a cell left in no sequence is freed), the
  accepted path's sequence loses its cells beyond the path, and the path's cells are copied
  into every other sequence. Work in the tree's size and the number of sequences; nothing
  is recomputed.

The KV cache is llama.cpp's unified one (``kv_unified``), where one cell may belong to many
sequences. Contexts (KV cache and compute buffers) are pooled per model: a target takes one
for its generation and gives it back on :meth:`LlamaCppTarget.close`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_folder, read_marker, remove_path, sha256_file, write_atomic
from specdecode.models.cache import cache_dir, check_writable
from specdecode.models.conversion import _safe_name
from specdecode.models.loader import LoadedModel
from specdecode.models.quiet import one_line, quiet_transformers
from specdecode.tree import DraftTree

INSTALL_HINT = (
    'install the optional extra: pip install -c constraints.txt -e ".[llamacpp]" '
    "(it builds llama.cpp from source: about 5 minutes on 2 cores)"
)
N_BATCH = 512  # tokens per llama_decode call: prompt chunks, and the largest tree (+ root)
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: the most leaves a tree may have
DEFAULT_MAX_CONTEXT = 8192  # KV cells per context when the model's own context is longer


class BackendCannot(SpecDecodeError, AttributeError):
    """Something asked the llama.cpp backend for what only a transformers model has. An
    AttributeError too, so ``hasattr`` probes see a missing attribute."""


_LIB: Any = None
_LIB_LOCK = threading.Lock()


def llama_cpp_module():
    """llama-cpp-python's module, imported and initialised once, its log lines silenced
    (failures reach the user as one SpecDecodeError line instead)."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            try:
                import llama_cpp
                from llama_cpp import _logger
            except ImportError as e:
                raise SpecDecodeError(
                    f"the llama.cpp backend needs llama-cpp-python, which cannot be imported ({one_line(e)}); "
                    + INSTALL_HINT
                ) from None
            _logger.logger.setLevel(logging.CRITICAL)
            llama_cpp.llama_backend_init()
            _LIB = llama_cpp
    return _LIB


def model_params(lib=None):
    """llama.cpp's model parameters as this backend (and its llama.cpp baselines) load every
    file with: on the CPU, and without extra weight buffer types. Those are AMX and repacked
    weights; llama.cpp's AMX matmul crashes (SIGSEGV in ggml_backend_amx_mul_mat,
    ggml-org/llama.cpp#20824) on quantized weights on CPUs with AMX, as on this project's
    Intel Xeon VMs with the Q4_1 and Q8_0 files."""
    lib = lib or llama_cpp_module()
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = False
    return params


def default_threads() -> int:
    """llama.cpp's thread count: torch's (``--threads`` sets it; by default one per core). On a
    machine other processes keep busy, fewer threads than cores can be much faster: llama.cpp's
    threads wait for each other at every operation, spinning, and stall when one is descheduled."""
    return max(1, torch.get_num_threads())


# ----------------------------------------------------------------------------- the tokenizer

TOKENIZER_MARKER = "specdecode-complete.json"
TOKENIZER_FORMAT = ("specdecode-gguf-tokenizer", 1)


def _tokenizer_problem(folder: Path, sha256: str) -> str | None:
    data, problem = read_marker(folder, TOKENIZER_MARKER, TOKENIZER_FORMAT)
    if problem is not None:
        return problem
    if data.get("gguf_sha256") != sha256:
        return "its marker names another GGUF"
    digests = data.get("sha256")
    if not isinstance(digests, dict) or not digests:
        return "its marker lists no files"
    for rel, digest in digests.items():
        if "/" in rel or rel.startswith("."):
            return "its marker lists a file outside the folder"
        try:
            if sha256_file(folder / rel) != digest:
                return f"{rel} does not match its sha256: changed or damaged on disk"
        except OSError:
            return f"{rel} is missing"
    return None


def gguf_tokenizer(gguf: Path, sha256: str):
    """The Hugging Face tokenizer transformers builds from ``gguf`` (slow: it parses the whole
    vocabulary), saved once in ``<cache>/llamacpp-tokenizers/<name>-<sha16>/`` and loaded
    from there after checking every file's sha256."""
    from transformers import AutoTokenizer

    name = gguf.name[: -len(".gguf")] if gguf.name.lower().endswith(".gguf") else gguf.name
    folder = cache_dir() / "llamacpp-tokenizers" / f"{_safe_name(name)}-{sha256[:16]}"
    if _tokenizer_problem(folder, sha256) is None:
        try:
            with quiet_transformers(progress=False):
                return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception:
            pass  # intact by its digests yet unreadable: built again below
    check_writable(folder.parent, f"cannot cache the tokenizer of {gguf.name}")
    try:
        with quiet_transformers(progress=False):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:
        raise SpecDecodeError(f"could not read the tokenizer of GGUF file '{gguf}': {one_line(e)}") from None
    remove_path(folder)
    try:
        with atomic_folder(folder, keep_existing=lambda f: _tokenizer_problem(f, sha256) is None) as tmp:
            with quiet_transformers(progress=False):
                tokenizer.save_pretrained(tmp)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            marker = {
                "format": TOKENIZER_FORMAT[0],
                "format_version": TOKENIZER_FORMAT[1],
                "gguf_name": gguf.name,
                "gguf_sha256": sha256,
                "sha256": {rel: sha256_file(tmp / rel) for rel in files},
            }
            write_atomic(tmp / TOKENIZER_MARKER, json.dumps(marker, indent=1, sort_keys=True))
    except OSError as e:
        raise SpecDecodeError(
            f"could not cache the tokenizer of '{gguf}' in {folder}: {one_line(e)} "
            "(set SPECDECODE_CACHE to a writable folder)"
        ) from None
    return tokenizer


# ----------------------------------------------------------------------------- the model


class _Config:
    """The few config fields code outside the forward reads (vocabulary size, context)."""

    def __init__(self, vocab_size: int, max_position_embeddings: int, eos_token_id: int | None) -> None:
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.eos_token_id = eos_token_id

    def get_text_config(self) -> _Config:
        return self


class _GenerationConfig:
    def __init__(self, eos_token_id: int | None) -> None:
        self.eos_token_id = eos_token_id


class LlamaCppWeights:
    """What stands in :attr:`LoadedModel.model` on the llama.cpp backend: the config and the
    generation config that drafters and the engine read. A method that needs the transformers
    model itself (its layers, hidden states, a forward) gets one clear :class:`BackendCannot`
    line instead."""

    def __init__(self, config: _Config, generation_config: _GenerationConfig, label: str) -> None:
        self.config = config
        self.generation_config = generation_config
        self._label = label

    def get_output_embeddings(self) -> None:
        return None  # readers fall back to config.vocab_size

    def _cannot(self, what: str) -> BackendCannot:
        return BackendCannot(
            f"this method needs the transformers model itself ({what}), which the llama.cpp backend "
            f"does not have ({self._label}): run it with --backend transformers"
        )

    def __call__(self, *args, **kwargs):
        raise self._cannot("a forward through transformers")

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_label":
            raise AttributeError(name)
        raise self._cannot(f"model.{name}")


@dataclass
class _Context:
    """One llama.cpp context (its KV cache and compute buffers) with a batch to fill."""

    ctx: Any
    batch: Any
    token: np.ndarray  # views of the batch's arrays, [N_BATCH] each
    pos: np.ndarray
    n_seq_id: np.ndarray
    logits: np.ndarray
    seq_id: list[np.ndarray]  # [N_BATCH] rows of [MAX_SEQUENCES]


def _free_all(lib, handle, pool: list[_Context]) -> None:
    while pool:
        c = pool.pop()
        lib.llama_batch_free(c.batch)
        lib.llama_free(c.ctx)
    lib.llama_model_free(handle)


@dataclass(eq=False)
class LlamaCppModel(LoadedModel):
    """A GGUF file loaded in llama.cpp, ready to decode. ``dtype`` says the weights' float
    format (float32 for F32 and for quantized files, whose activations llama.cpp keeps in
    F32; bfloat16, float16); ``weights`` names the file's format (F32, BF16, Q4_1...)."""

    path: Path = field(default=Path(), repr=False)
    weights: str = "?"
    n_ctx: int = 0
    n_threads: int = 1
    n_vocab: int = 0
    flash_attn: bool = False
    twin_name: str | None = field(default=None, repr=False)  # load_model() name of the same weights
    backend: str = "llama.cpp"
    _lib: Any = field(default=None, repr=False)
    _handle: Any = field(default=None, repr=False)
    _pool: list = field(default_factory=list, repr=False)
    _pool_lock: Any = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        tokenizer,
        name: str,
        source: str,
        key: str,
        dtype: torch.dtype = torch.float32,
        max_context: int | None = None,
        n_threads: int | None = None,
        flash_attn: bool = False,
        twin_name: str | None = None,
    ) -> LlamaCppModel:
        """Load GGUF ``path`` into llama.cpp (memory-mapped, CPU) with ``tokenizer``."""
        lib = llama_cpp_module()
        path = Path(path)
        params = model_params(lib)
        handle = lib.llama_model_load_from_file(str(path).encode(), params)
        if not handle:
            raise SpecDecodeError(f"llama.cpp could not load '{path}' (not a model it supports, or damaged)")
        vocab = lib.llama_model_get_vocab(handle)
        n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        trained = int(lib.llama_model_n_ctx_train(handle)) or DEFAULT_MAX_CONTEXT
        n_ctx = min(trained, max_context or DEFAULT_MAX_CONTEXT)
        eos = int(lib.llama_vocab_eos(vocab))
        eos = eos if eos >= 0 else None
        weights = _meta(lib, handle, "general.file_type")
        label = f"{path.name}, {_FILE_TYPES.get(weights, 'type ' + str(weights))}"
        model = cls(
            model=LlamaCppWeights(_Config(n_vocab, n_ctx, eos), _GenerationConfig(eos), label),
            tokenizer=tokenizer,
            name=name,
            source=source,
            device=torch.device("cpu"),
            dtype=dtype,
            key=key,
            path=path,
            weights=_FILE_TYPES.get(weights, f"type {weights}"),
            n_ctx=n_ctx,
            n_threads=n_threads or default_threads(),
            n_vocab=n_vocab,
            flash_attn=flash_attn,
            twin_name=twin_name,
            _lib=lib,
            _handle=handle,
        )
        weakref.finalize(model, _free_all, lib, handle, model._pool)
        return model

    # ---- what the engine asks of a loaded model ---------------------------------------------
    def new_target(self) -> LlamaCppTarget:
        """A fresh target (its own KV cache) for one generation."""
        return LlamaCppTarget(self)

    def transformers_twin(self) -> LoadedModel:
        """The same weights in transformers (float32, or this file's float dtype), for the
        transformers baselines of ``bench``."""
        from specdecode.models.loader import load_model

        return load_model(self.twin_name, device="cpu", dtype=str(self.dtype).removeprefix("torch."))

    # ---- contexts ---------------------------------------------------------------------------
    def acquire_context(self) -> _Context:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        lib = self._lib
        params = lib.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = N_BATCH
        params.n_ubatch = N_BATCH
        params.n_seq_max = MAX_SEQUENCES  # one per leaf of a tree, in one unified cache
        params.kv_unified = True
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        ctx = lib.llama_init_from_model(self._handle, params)
        if not ctx:
            raise SpecDecodeError(
                f"llama.cpp could not create a context of {self.n_ctx} tokens for {self.path.name} "
                "(out of memory?)"
            )
        batch = lib.llama_batch_init(N_BATCH, 0, MAX_SEQUENCES)

        def view(ptr, shape):
            return np.ctypeslib.as_array(ptr, shape=shape)

        rows = [view(batch.seq_id[i], (MAX_SEQUENCES,)) for i in range(N_BATCH)]
        return _Context(
            ctx, batch, view(batch.token, (N_BATCH,)), view(batch.pos, (N_BATCH,)),
            view(batch.n_seq_id, (N_BATCH,)), view(batch.logits, (N_BATCH,)), rows,
        )  # fmt: skip

    def release_context(self, c: _Context) -> None:
        with self._pool_lock:
            self._pool.append(c)


# llama.cpp's enum llama_ftype, the values a GGUF's general.file_type takes (the common ones)
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip
_FLOAT_DTYPES = {0: torch.float32, 1: torch.float16, 32: torch.bfloat16}


def _meta(lib, handle, key: str) -> int | None:
    import ctypes

    buf = ctypes.create_string_buffer(64)
    n = lib.llama_model_meta_val_str(handle, key.encode(), buf, len(buf))
    if n < 0:
        return None
    try:
        return int(buf.value.decode())
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the target


class LlamaCppTarget:
    """Scores draft trees with llama.cpp; keeps the KV cells of the accepted path.

    The same contract as :class:`specdecode.target.Target`: the cache holds the committed
    tokens except the newest one, the root, which is fed with the next tree.
    """

    def __init__(self, loaded: LlamaCppModel) -> None:
        self.loaded = loaded
        self.device = loaded.device
        self._lib = loaded._lib
        self._c: _Context | None = loaded.acquire_context()
        self._mem = self._lib.llama_get_memory(self._c.ctx)
        self._past = 0  # committed tokens in the cache
        self._sequences = 1  # sequences 0 .. _sequences-1 each hold every committed token
        self._pending: tuple[list[list[int]], list[int], int] | None = None  # the scored tree

    @property
    def length(self) -> int:
        """Tokens whose keys and values are in the cache."""
        return self._past

    def _context(self) -> _Context:
        if self._c is None:
            raise SpecDecodeError("this llama.cpp target was closed: start a new generation")
        return self._c

    def _decode(self, c: _Context, n: int) -> None:
        c.batch.n_tokens = n
        rc = self._lib.llama_decode(c.ctx, c.batch)
        if rc != 0:
            why = {1: "no room left in its KV cache", 2: "aborted", -1: "an invalid batch"}.get(
                rc, "an error"
            )
            raise SpecDecodeError(
                f"llama.cpp could not run the forward ({why}, llama_decode returned {rc}; "
                f"context {self.loaded.n_ctx} tokens, {self._past} used)"
            )

    def _logits(self, c: _Context, rows: int) -> torch.Tensor:
        ptr = self._lib.llama_get_logits(c.ctx)
        out = np.ctypeslib.as_array(ptr, shape=(rows, self.loaded.n_vocab))
        return torch.from_numpy(out.copy())  # [rows, vocab]

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Start a new sequence: cache ``ids`` and return the logits after the last one, ``[vocab]``."""
        c = self._context()
        n = len(ids)
        if n >= self.loaded.n_ctx:
            raise SpecDecodeError(
                f"the prompt has {n} tokens but the llama.cpp context holds {self.loaded.n_ctx}"
            )
        self._lib.llama_memory_clear(self._mem, True)
        self._past, self._sequences, self._pending = 0, 1, None
        for start in range(0, n, N_BATCH):
            chunk = ids[start : start + N_BATCH]
            k = len(chunk)
            c.token[:k] = chunk
            c.pos[:k] = np.arange(start, start + k)
            c.n_seq_id[:k] = 1
            for i in range(k):
                c.seq_id[i][0] = 0
            c.logits[:k] = 0
            if start + k == n:
                c.logits[k - 1] = 1
            self._decode(c, k)
        self._past = n
        return self._logits(c, 1)[0]

    def score(self, root: int, tree: DraftTree) -> torch.Tensor:
        """Score ``[root] + tree.tokens`` in one llama.cpp batch.

        Returns logits ``[n + 1, vocab_size]``: row 0 follows the root, row ``i + 1`` follows
        node ``i``. Until :meth:`commit`, the cache holds the cells of every scored node.
        """
        c = self._context()
        assert self._pending is None, "commit() the previous tree first"
        n, past = len(tree), self._past
        if n + 1 > N_BATCH:
            raise SpecDecodeError(
                f"a draft tree of {n} nodes is more than llama.cpp scores at once ({N_BATCH - 1})"
            )
        parents = tree.parents
        depth = [0] * n
        for i, p in enumerate(parents):
            depth[i] = 1 if p < 0 else depth[p] + 1
        # below[i]: the sequences (leaves) under node i; children come after their parents
        below: list[list[int]] = [[] for _ in range(n)]
        leaves = 0
        for i in range(n - 1, -1, -1):
            if not below[i]:
                below[i].append(leaves)
                leaves += 1
            if parents[i] >= 0:
                below[parents[i]].extend(below[i])
        if leaves > MAX_SEQUENCES:
            raise SpecDecodeError(
                f"a draft tree with {leaves} leaves is more than llama.cpp can score at once ({MAX_SEQUENCES})"
            )
        for s in range(self._sequences, leaves):  # a new sequence gets the committed tokens
            self._lib.llama_memory_seq_cp(self._mem, 0, s, -1, -1)
        self._sequences = max(self._sequences, leaves)
        c.token[0] = root
        c.pos[0] = past
        c.n_seq_id[0] = self._sequences
        c.seq_id[0][: self._sequences] = np.arange(self._sequences)
        if n:
            c.token[1 : n + 1] = tree.tokens
            c.pos[1 : n + 1] = np.asarray(depth) + past
            for i, seqs in enumerate(below, start=1):
                c.n_seq_id[i] = len(seqs)
                c.seq_id[i][: len(seqs)] = seqs
        c.logits[: n + 1] = 1
        self._decode(c, n + 1)
        self._pending = (below, depth, leaves)
        return self._logits(c, n + 1)

    def commit(self, path: list[int]) -> None:
        """Keep the root and the accepted ``path`` (node indices, root's child first); drop the rest."""
        assert self._pending is not None, "score() a tree first"
        below, depth, leaves = self._pending
        self._pending = None
        past, a = self._past, len(path)
        if below:
            assert not path or depth[path[-1]] == a, "the path must run from the root's child down"
            lib, mem = self._lib, self._mem
            keep = below[path[-1]][0] if path else 0  # a sequence through the whole path
            for s in range(leaves):
                if s != keep:
                    lib.llama_memory_seq_rm(mem, s, past + 1, -1)
            lib.llama_memory_seq_rm(mem, keep, past + 1 + a, -1)
            if a:
                for s in range(self._sequences):
                    if s != keep:
                        lib.llama_memory_seq_cp(mem, keep, s, past + 1, past + 1 + a)
        self._past = past + 1 + a

    def crop(self, length: int) -> None:
        """Truncate the cache to its first ``length`` tokens."""
        assert self._pending is None and 0 <= length <= self._past
        self._lib.llama_memory_seq_rm(self._mem, -1, length, -1)
        self._past = length

    def reader(self, needs):
        """Drafters that read the target's hidden states or KV cache cannot run here."""
        raise BackendCannot(
            f"this method drafts from the target's own {' and '.join(sorted(needs))}, which the llama.cpp "
            "backend does not expose: run it with --backend transformers"
        )

    def close(self) -> None:
        """Give the context back to the model's pool (idempotent)."""
        c, self._c = self._c, None
        if c is not None:
            self.loaded.release_context(c)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- loading

_MEMO: dict[tuple, LlamaCppModel] = {}
_MEMO_LOCK = threading.RLock()


def load_llamacpp(
    name: str | None, *, device: str | None = "auto", dtype: str | None = None
) -> LlamaCppModel:
    """Load model ``name`` (as :func:`specdecode.models.loader.load_model` names models: None /
    "default", an alias, a .gguf file) on the llama.cpp backend. ``dtype`` None/"auto" runs the
    file as it is; float32, bfloat16 or float16 run a float copy of it (written once, cached:
    :mod:`specdecode.backends.gguf_float`)."""
    from specdecode.backends.gguf_float import float_gguf
    from specdecode.models.loader import _resolve_source, resolve_dtype

    spec = str(device).strip().lower() if device is not None else "auto"
    if spec not in ("auto", "cpu"):
        raise SpecDecodeError(
            f"the llama.cpp backend runs on the CPU here (llama-cpp-python built without GPU support), "
            f"not on '{device}': use --device cpu or --backend transformers"
        )
    src = _resolve_source(name)
    if src.kind != "gguf":
        raise SpecDecodeError(
            f"the llama.cpp backend runs GGUF files, and '{src.source}' is a Hugging Face model folder: "
            "pass a .gguf file, or use --backend transformers"
        )
    want = None if dtype is None or str(dtype).strip().lower() == "auto" else resolve_dtype(dtype, "cpu")
    st = src.path.stat()
    threads = default_threads()
    memo_key = (str(src.path), st.st_size, st.st_mtime_ns, want, threads)
    with _MEMO_LOCK:
        hit = _MEMO.get(memo_key)
        if hit is not None:
            return hit
        llama_cpp_module()  # a missing llama-cpp-python is said before any slow work
        sha = sha256_file(src.path, remember=True)
        if src.expected_sha256 is not None and sha != src.expected_sha256:
            raise SpecDecodeError(
                f"'{src.path}' has sha256 {sha}, expected {src.expected_sha256}: the file is damaged; {src.repair}"
            )
        tokenizer = gguf_tokenizer(src.path, sha)
        run = src.path if want is None else float_gguf(src.path, sha, want)
        loaded = LlamaCppModel.open(
            run,
            tokenizer=tokenizer,
            name=src.name,
            source=str(run),
            key=f"{sha[:16]}-llamacpp",
            n_threads=threads,
            twin_name=name,
        )
        file_dtype = _FLOAT_DTYPES.get({v: k for k, v in _FILE_TYPES.items()}.get(loaded.weights, -1))
        loaded.dtype = want or file_dtype or torch.float32
        loaded.key = f"{sha[:16]}-llamacpp-{loaded.weights}"
        loaded.name = f"{src.name} [llama.cpp {loaded.weights}]"
        _MEMO[memo_key] = loaded
        return loaded
