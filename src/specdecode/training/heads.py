"""Draft heads on the target's last hidden state: the modules, and their files.

Notation: ``h_t`` is the target's final hidden state (after its final norm) at position ``t``;
the target's LM head turns it into the distribution of ``x_{t+1}``, the *root* of the next
draft. Head ``k`` (``k = 1 .. K``) predicts ``x_{t+1+k}``, the draft token at depth ``k``.

- **Medusa** (Cai et al. 2024): head ``k`` sees ``h_t`` only; one residual block
  ``h + SiLU(W_k h + b_k)`` then the target's own (frozen) LM head. The heads are independent,
  so a tree of their top-k tokens costs one small matrix product per head.
- **Hydra** (Ankner et al. 2024): head ``k`` also sees the tokens before the one it predicts:
  its block's input is ``[h_t; e(x_{t+1}); ...; e(x_{t+k})]`` with ``e`` the target's (frozen)
  input embedding, so each head knows what was drafted before it (sequentially dependent).
- **Clover** (Xiao et al. 2024), simplified: a *regressive connection* carries sequential
  knowledge from head to head: ``s_0 = h_t``, ``s_{k+1} = s_k + SiLU(W_k [s_k; e(x_{t+1+k})])``,
  head ``k``'s output is ``s_{k+1}``. Each head sees the previous head's state and the token
  drafted at its parent, a fixed-width input however deep the tree (the paper's attention-based
  connection and augmenting block are replaced by this one recurrent step).

The output layer of every block starts at zero, so an untrained head predicts what the LM head
says after ``h_t``: the root's distribution. Files: the heads' weights as safetensors plus a
JSON sidecar naming the model they were trained for (:func:`save_heads`, :func:`load_heads`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_file, write_atomic

METHODS = ("medusa", "hydra", "clover")
FORMAT = "specdecode-draft-heads"
FORMAT_VERSION = 1


class DraftHeads(nn.Module):
    """``K`` heads of ``method`` for a target of hidden size ``hidden``.

    :meth:`forward` gives the heads' hidden outputs; the caller applies the target's LM head
    (kept outside, frozen and shared, never copied into the heads' file).
    """

    def __init__(self, method: str, num_heads: int, hidden: int) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown head method {method!r}")
        self.method = method
        self.num_heads = num_heads
        self.hidden = hidden
        per_head = {"medusa": lambda k: 1, "hydra": lambda k: k + 2, "clover": lambda k: 2}[method]
        widths = [hidden * per_head(k) for k in range(num_heads)]
        self.blocks = nn.ModuleList(nn.Linear(w, hidden) for w in widths)
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)
        # Token ids by how much of the target's probability mass they had in the training text,
        # most first (the drafters may restrict their LM head product to the first N of them).
        self.vocab_rank: torch.Tensor | None = None  # [n] long

    def head(self, k: int, h: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Head ``k`` (0-based: predicts depth ``k + 1``) on ``h`` ``[..., hidden]``; for hydra
        ``prev`` ``[..., k + 1, hidden]`` holds the embeddings of the root and the ``k`` tokens
        drafted before. Returns ``[..., hidden]`` for the LM head."""
        x = h
        if self.method == "hydra":
            x = torch.cat([h, prev.flatten(-2)], dim=-1)  # [..., (k + 2) * hidden]
        return h + nn.functional.silu(self.blocks[k](x))

    def step(self, k: int, state: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Clover's head ``k``: the next state ``[..., hidden]`` from the previous head's state
        (``h_t`` for head 0) and the embedding ``[..., hidden]`` of the token at its parent."""
        return state + nn.functional.silu(self.blocks[k](torch.cat([state, emb], dim=-1)))

    def forward(self, h: torch.Tensor, prev: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every head on ``h`` ``[..., hidden]`` (hydra, clover: ``prev`` ``[..., K, hidden]``,
        the root and the tokens after it, teacher-forced in training)."""
        if self.method == "clover":
            outs, state = [], h
            for k in range(self.num_heads):
                state = self.step(k, state, prev[..., k, :])
                outs.append(state)
            return outs
        return [
            self.head(k, h, None if prev is None else prev[..., : k + 1, :]) for k in range(self.num_heads)
        ]


def default_heads_path(loaded, method: str) -> Path:
    """Where ``specdecode train METHOD`` puts heads for ``loaded`` by default, keyed by its digest."""
    from specdecode.models.cache import cache_dir

    return cache_dir() / "heads" / loaded.key / f"{method}.safetensors"


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_heads(heads: DraftHeads, path: Path, info: dict) -> None:
    """The heads' weights as safetensors at ``path`` and ``info`` (what they were trained on)
    as JSON beside it, each written atomically; the JSON last, so a file without its sidecar
    is never taken for a finished one."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu().float() for k, v in heads.state_dict().items()}
    if heads.vocab_rank is not None:
        tensors["vocab_rank"] = heads.vocab_rank.detach().contiguous().cpu().long()
    meta = {"format": FORMAT, "method": heads.method, "model_key": info["model_key"]}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    record = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "method": heads.method,
        "num_heads": heads.num_heads,
        "hidden_size": heads.hidden,
        **info,
    }
    write_atomic(sidecar(path), json.dumps(record, indent=2) + "\n")


def read_trained(
    path: Path,
    loaded,
    method: str,
    noun: str,
    kind: Callable[[dict], str | None],
    fits: Callable[[dict], bool],
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON description and the tensors of a trained file (``noun``: "heads", "adapter") for
    target ``loaded``; refuses (one clear line) a file that is missing, unreadable, of another
    kind (``kind`` returns why, or None), trained for another model, or of another shape
    (``fits``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SpecDecodeError(
            f"{method}: no trained {noun} at {path}: run `specdecode train {method}` first "
            "(or give heads=PATH)"
        )
    try:
        info = json.loads(sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecDecodeError(
            f"{method}: the description {sidecar(path)} of the {noun} cannot be read ({e})"
        ) from None
    why = kind(info) if isinstance(info, dict) else f"{sidecar(path)} does not describe trained {noun}"
    if why:
        raise SpecDecodeError(f"{method}: {why}")
    if info.get("model_key") != loaded.key:
        raise SpecDecodeError(
            f"{method}: {path} was trained for another model ({info.get('model_name')}, digest "
            f"{info.get('model_key')}), not {loaded.name} (digest {loaded.key}): train {noun} for this "
            f"model with `specdecode train {method} --model ...`"
        )
    if not fits(info):
        raise SpecDecodeError(f"{method}: {path} does not fit this model's shape")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SpecDecodeError(f"{method}: {path} is not a readable safetensors file ({e})") from None
    return info, tensors


def load_weights(
    module: nn.Module, tensors: dict[str, torch.Tensor], method: str, path: Path, loaded
) -> None:
    """Load ``tensors`` into ``module`` (refusing, in one line, weights that do not match it) and
    move it to the target's device and dtype, frozen, for inference."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError:
        raise SpecDecodeError(
            f"{method}: {path} does not hold the weights its description promises"
        ) from None
    module.to(device=loaded.device, dtype=loaded.dtype).eval()
    for p in module.parameters():
        p.requires_grad_(False)


def load_heads(path: Path, loaded, method: str) -> tuple[DraftHeads, dict]:
    """The heads at ``path`` for target ``loaded`` (:func:`read_trained`'s refusals)."""

    def kind(info: dict) -> str | None:
        if info.get("format") != FORMAT:
            return f"{sidecar(path)} does not describe specdecode draft heads"
        if info.get("method") != method:
            return (
                f"{path} holds {info.get('method')} heads, not {method}: train {method} heads "
                f"with `specdecode train {method}`"
            )
        return None

    hidden = _hidden_size(loaded.model)

    def fits(info: dict) -> bool:
        return info.get("hidden_size") == hidden and isinstance(info.get("num_heads"), int)

    info, tensors = read_trained(Path(path), loaded, method, "heads", kind, fits)
    heads = DraftHeads(method, info["num_heads"], hidden)
    rank = tensors.pop("vocab_rank", None)
    load_weights(heads, tensors, method, path, loaded)
    if rank is not None:
        vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
        if rank.dim() != 1 or len(rank) == 0 or int(rank.min()) < 0 or int(rank.max()) >= vocab:
            raise SpecDecodeError(f"{method}: {path} ranks token ids outside this model's vocabulary")
        heads.vocab_rank = rank.to(loaded.device)
    return heads, info


def _hidden_size(model) -> int:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return int(config.hidden_size)
