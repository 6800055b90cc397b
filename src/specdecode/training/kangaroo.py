"""Kangaroo's adapter (Liu et al. 2024, "Kangaroo: Lossless Self-Speculative Decoding via Double
Early Exiting"): the module, its file, and its training by self-distillation.

Notation: ``z_t`` is the target's hidden state at position ``t`` after its first ``exit_layer``
decoder layers (the shallow sub-network; ``hidden_states[exit_layer]`` of a transformers
forward). The adapter is one attention block without an MLP, as in the paper::

    a_t = z_t + Attn(Norm1(z_{<=t}))        (causal self-attention over the exit-layer states)
    q(x_{t+1}) = softmax(LMHead(Norm2(a_t)))

with the target's own (frozen) LM head. ``Norm2`` starts as the target's final norm and the
attention's output projection at zero, so an untrained adapter is the plain early exit: the
target's LM head on its layer-``exit_layer`` state. The adapter keeps its own keys and values
per position, as a decoder layer does.

Training (:func:`train_adapter`): the same self-distilled text and labels as the draft heads
(:func:`specdecode.training.train.training_data`: the target's greedy answers to the prompts,
its top-``top_labels`` next-token distributions at every position); the exit-layer states of
every sequence computed once; each step runs the adapter over ``seqs`` whole sequences and
takes the cross-entropy against the target's distribution at ``batch`` answer positions drawn
among them. Every ``save_every`` steps the adapter's top-1 agreement with the target on the
held-out sequences is measured, and the best adapter so far is the one saved (early stopping:
on a small text the adapter overfits within a few hundred steps). Files: safetensors + a JSON sidecar naming the model, the exit layer and the data
(:func:`save_adapter`, :func:`load_adapter`), at the heads' default location
(:func:`specdecode.training.heads.default_heads_path`, ``kangaroo.safetensors``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_file, remove_path, write_atomic
from specdecode.training.heads import load_weights, read_trained, sidecar
from specdecode.training.prompts import PROMPTS

METHOD = "kangaroo"
FORMAT = "specdecode-kangaroo-adapter"
FORMAT_VERSION = 1


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Adapter(nn.Module):
    """One attention block (norm, multi-head causal self-attention with rotary positions,
    residual) and a final norm; its output goes to the target's LM head."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.hidden, self.num_heads, self.head_dim = hidden, num_heads, head_dim
        self.norm1 = RMSNorm(hidden, eps)
        self.q_proj = nn.Linear(hidden, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden, bias=False)
        self.norm2 = RMSNorm(hidden, eps)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(proj.weight, std=hidden**-0.5)
        nn.init.zeros_(self.o_proj.weight)  # starts as the plain early exit

    def forward(self, z, rope, mask=None, cache=None, layer_idx: int = 0) -> torch.Tensor:
        """``z`` ``[B, T, hidden]`` exit-layer states; ``rope`` ``(cos, sin)`` ``[B, T, head_dim]``
        (the target's rotary embedding at the positions); ``mask`` ``[B, 1, T, S]`` additive, or
        None for a single query over everything cached; ``cache``: an object with
        ``update(k, v, layer_idx)`` returning every key and value row so far (inference).
        Returns ``[B, T, hidden]`` for the LM head."""
        b, t, _ = z.shape
        x = self.norm1(z)

        def heads(proj):
            return proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]

        cos, sin = (r.unsqueeze(1) for r in rope)
        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        if mask is None and cache is None:
            mask = causal_mask(t, t, z.dtype, z.device)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, D]
        out = self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        return self.norm2(z + out)


def causal_mask(queries: int, keys: int, dtype, device) -> torch.Tensor:
    """Additive mask ``[1, 1, queries, keys]``: the queries are the last ``queries`` positions of
    the ``keys``, each sees itself and everything before."""
    blocked = torch.ones(queries, keys, dtype=torch.bool, device=device).triu(keys - queries + 1)
    return torch.zeros(queries, keys, dtype=dtype, device=device).masked_fill(
        blocked, torch.finfo(dtype).min
    )[None, None]


def shallow_pass(base, layers, ids: torch.Tensor, start: int, cache=None) -> tuple[torch.Tensor, tuple]:
    """The target's embedding and first ``len(layers)`` decoder layers on ``ids`` ``[1, T]`` at
    positions ``start ..``; ``cache`` holds the rows of the positions before ``start``.
    Returns the exit-layer states ``[1, T, hidden]`` and the rotary ``(cos, sin)`` used."""
    t = ids.shape[1]
    z = base.embed_tokens(ids)  # [1, T, hidden]
    pos = torch.arange(start, start + t, device=ids.device)[None]
    rope = base.rotary_emb(z, position_ids=pos)
    mask = None if t == 1 and cache is not None else causal_mask(t, start + t, z.dtype, z.device)
    for layer in layers:
        z = layer(z, attention_mask=mask, position_ids=pos, position_embeddings=rope, cache=cache)
    return z, rope


def model_shape(model) -> dict:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return {
        "hidden_size": hidden,
        "num_heads": heads,
        "head_dim": head_dim,
        "eps": float(getattr(config, "rms_norm_eps", 1e-6)),
        "num_layers": int(config.num_hidden_layers),
    }


def new_adapter(model) -> Adapter:
    shape = model_shape(model)
    adapter = Adapter(shape["hidden_size"], shape["num_heads"], shape["head_dim"], shape["eps"])
    with torch.no_grad():
        adapter.norm2.weight.copy_(model.model.norm.weight.float())
    return adapter


# ---- files ---------------------------------------------------------------------------------------
def save_adapter(adapter: Adapter, path: Path, info: dict) -> None:
    """Weights as safetensors at ``path``, ``info`` as JSON beside it (written last)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu().float() for k, v in adapter.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "model_key": info["model_key"]})
    record = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "method": METHOD,
        "hidden_size": adapter.hidden,
        "num_heads": adapter.num_heads,
        "head_dim": adapter.head_dim,
        **info,
    }
    write_atomic(sidecar(path), json.dumps(record, indent=2) + "\n")


def load_adapter(path: Path, loaded) -> tuple[Adapter, dict]:
    """The adapter at ``path`` for target ``loaded`` (:func:`read_trained`'s refusals)."""

    def kind(info: dict) -> str | None:
        if info.get("format") == FORMAT:
            return None
        what = info.get("method")
        return (
            f"{path} is not a kangaroo adapter"
            + (f" (it holds {what} heads)" if what else "")
            + ": train one with `specdecode train kangaroo`"
        )

    shape = model_shape(loaded.model)

    def fits(info: dict) -> bool:
        exit_layer = info.get("exit_layer")
        return (
            all(info.get(k) == shape[k] for k in ("hidden_size", "num_heads", "head_dim"))
            and isinstance(exit_layer, int)
            and 1 <= exit_layer < shape["num_layers"]
        )

    info, tensors = read_trained(Path(path), loaded, "kangaroo", "adapter", kind, fits)
    adapter = Adapter(shape["hidden_size"], shape["num_heads"], shape["head_dim"], shape["eps"])
    load_weights(adapter, tensors, "kangaroo", path, loaded)
    return adapter, info


# ---- training ------------------------------------------------------------------------------------
@dataclass
class KangarooSettings:
    exit_layer: int = 2
    steps: int = 600
    batch: int = 256  # answer positions in the loss per step
    seqs: int = 8  # sequences the adapter runs over per step
    lr: float = 2e-3
    top_labels: int = 16
    max_new_tokens: int = 160
    seed: int = 0
    save_every: int = 50
    eval_fraction: float = 0.1

    def check(self, num_layers: int | None = None) -> None:
        for name in ("steps", "batch", "seqs", "top_labels", "max_new_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise SpecDecodeError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise SpecDecodeError(f"the learning rate must be > 0, got {self.lr}")
        top = "" if num_layers is None else f" and < {num_layers} (this model's layers)"
        if self.exit_layer < 1 or (num_layers is not None and self.exit_layer >= num_layers):
            raise SpecDecodeError(f"the exit layer must be >= 1{top}, got {self.exit_layer}")


class _Kept(nn.Module):
    """The adapter in training and the best one so far by held-out agreement (one module, so
    that a checkpoint holds both)."""

    def __init__(self, adapter: Adapter, evals: int) -> None:
        super().__init__()
        import copy

        self.now = adapter
        self.best = copy.deepcopy(adapter)
        self.register_buffer("score", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("best_step", torch.tensor(0))
        self.register_buffer("curve", torch.full((evals, 2), float("nan"), dtype=torch.float64))

    @torch.no_grad()
    def judge(self, step: int, score: float) -> None:
        row = int(torch.isnan(self.curve[:, 0]).logical_not().sum())
        if row < len(self.curve):
            self.curve[row] = torch.tensor([step, score], dtype=torch.float64)
        if score > float(self.score):
            self.score.fill_(score)
            self.best_step.fill_(step)
            self.best.load_state_dict(self.now.state_dict())

    def history(self) -> list[list[float]]:
        return [[int(a), round(float(b), 4)] for a, b in self.curve.tolist() if a == a]


@torch.no_grad()
def exit_states(loaded, data, exit_layer: int) -> list[torch.Tensor]:
    """Per sequence of ``data``: its exit-layer states ``[length, hidden]``."""
    from specdecode.drafters.swift import layer_stack

    base, layers = layer_stack(loaded.model, METHOD)
    out = []
    for o, n in zip(data["start"].tolist(), data["length"].tolist(), strict=True):
        ids = data["tokens"][o : o + n][None].to(loaded.device)
        z, _ = shallow_pass(base, layers[:exit_layer], ids, 0)
        out.append(z[0].clone())
    return out


def _answer_rows(data, s: int) -> tuple[int, int, int]:
    """Sequence ``s``: its first row, and the first and last positions whose label is an answer
    token (row ``t``: the target's distribution of token ``t + 1``)."""
    o, p, n = (int(data[k][s]) for k in ("start", "prompt_len", "length"))
    return o, p - 1, n - 2


def adapter_outputs(adapter, base, states: list[torch.Tensor], seqs: list[int]) -> torch.Tensor:
    """The adapter over the whole of each sequence in ``seqs`` (padded): ``[len(seqs), T, hidden]``."""
    lengths = [len(states[s]) for s in seqs]
    t = max(lengths)
    z = torch.zeros(
        len(seqs), t, states[seqs[0]].shape[-1], dtype=states[seqs[0]].dtype, device=states[0].device
    )
    for i, s in enumerate(seqs):
        z[i, : lengths[i]] = states[s]
    pos = torch.arange(t, device=z.device)[None].expand(len(seqs), t)
    rope = base.rotary_emb(z, position_ids=pos)
    mask = causal_mask(t, t, z.dtype, z.device)  # padding sits after every real row: never seen
    return adapter(z, rope, mask)


@torch.no_grad()
def predictions(adapter, base, lm_head, data, states, s: int) -> list[int]:
    """The adapter's top token at each answer position of sequence ``s``."""
    o, first, last = _answer_rows(data, s)
    out = adapter_outputs(adapter, base, states, [s])[0, first : last + 1]
    return lm_head(out).argmax(-1).tolist()


@torch.no_grad()
def agreement(adapter, base, lm_head, data, states, seqs) -> float:
    """How often the adapter's top token is the target's, over the answer positions of ``seqs``."""
    hits = total = 0
    for s in seqs:
        o, first, last = _answer_rows(data, s)
        if last < first:
            continue
        got = torch.tensor(predictions(adapter, base, lm_head, data, states, s))
        want = data["label_ids"][o + first : o + last + 1, 0].cpu()
        hits += int((got == want).sum())
        total += len(want)
    return hits / total if total else float("nan")


def train_adapter(
    loaded,
    settings: KangarooSettings,
    out: Path,
    *,
    prompts: list[str] | list[list[int]] | None = None,
    data_source: str = "built-in prompts (specdecode.training.prompts)",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
):
    """Train a kangaroo adapter for ``loaded`` and save it at ``out`` (+ JSON sidecar); resumes
    from ``<out>.ckpt`` when it was written for the same model, settings and data."""
    from tqdm import tqdm

    from specdecode.drafters.swift import layer_stack
    from specdecode.training import train as common

    model = loaded.model
    shape = model_shape(model)
    settings.check(shape["num_layers"])
    base, _ = layer_stack(model, METHOD)
    out = Path(out)
    prompts = PROMPTS if prompts is None else prompts
    torch.manual_seed(settings.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    lm_head = model.get_output_embeddings()

    data, data_path, data_seconds = common.training_data(
        loaded, prompts, settings.max_new_tokens, settings.top_labels, out, data_source, progress, log
    )
    for k in ("tokens", "label_ids", "label_probs"):
        data[k] = data[k].to(loaded.device)
    started = time.perf_counter()
    states = exit_states(loaded, data, settings.exit_layer)
    exit_seconds = time.perf_counter() - started
    n_seq = len(states)
    n_eval = int(n_seq * settings.eval_fraction) if n_seq >= 4 else 0
    train_seqs = [s for s in range(n_seq - n_eval) if _answer_rows(data, s)[2] >= _answer_rows(data, s)[1]]
    eval_seqs = list(range(n_seq - n_eval, n_seq))
    if not train_seqs:
        raise SpecDecodeError("the training text is too short for the adapter: give more or longer prompts")

    adapter = new_adapter(model).to(loaded.device, loaded.dtype)
    first_eval = agreement(adapter, base, lm_head, data, states, eval_seqs)  # the plain early exit
    # The adapter overfits a small training text fast (it attends over whole sequences): the one
    # kept is the one with the best held-out agreement, measured every save_every steps.
    kept = _Kept(adapter, settings.steps // settings.save_every + 1)
    opt = torch.optim.AdamW(adapter.parameters(), lr=settings.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed)
    ckpt_path = out.with_name(out.name + ".ckpt")
    data_key = data_path.name
    run_key = common._digest([METHOD, 2, asdict(settings) | {"steps": 0}, loaded.key, data_key])
    step, losses = 0, []
    resumed = common._read_checkpoint(ckpt_path, run_key)
    if resumed is not None:
        kept.load_state_dict(resumed["heads"])
        opt.load_state_dict(resumed["opt"])
        gen.set_state(resumed["rng"])
        step, losses = int(resumed["step"]), resumed["losses"]
        log(f"resuming from {ckpt_path} at step {step}")

    bar = tqdm(total=settings.steps, initial=step, desc="train kangaroo", unit="step", disable=not progress)
    train_started = time.perf_counter()
    while step < settings.steps:
        for group in opt.param_groups:
            group["lr"] = common.cosine_lr(step, settings.steps, settings.lr)
        pick = torch.randint(len(train_seqs), (min(settings.seqs, len(train_seqs)),), generator=gen)
        seqs = [train_seqs[i] for i in pick.tolist()]
        outs = adapter_outputs(adapter, base, states, seqs)  # [b, T, hidden]
        # (row in outs, row in data) of every answer position of the chosen sequences
        where = torch.cat(
            [
                torch.stack([torch.full((last - first + 1,), i), torch.arange(first, last + 1) + o], 1)
                for i, (o, first, last) in enumerate(_answer_rows(data, s) for s in seqs)
            ]
        )
        where = where[torch.randperm(len(where), generator=gen)[: settings.batch]]
        starts = torch.tensor([_answer_rows(data, s)[0] for s in seqs])
        rows = where[:, 1].to(loaded.device)
        h = outs[where[:, 0], rows.cpu() - starts[where[:, 0]]]  # [batch, hidden]
        logp = lm_head(h).float().log_softmax(-1)
        target = data["label_probs"][rows]
        target = target / target.sum(-1, keepdim=True)
        loss = -(target * logp.gather(-1, data["label_ids"][rows])).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append([float(loss.detach())])
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1][0]:.3f}")
        if step % settings.save_every == 0 or step == settings.steps:
            kept.judge(step, agreement(adapter, base, lm_head, data, states, eval_seqs) if eval_seqs else 0.0)
        if step % settings.save_every == 0 and step < settings.steps:
            common._write_checkpoint(ckpt_path, run_key, kept, opt, gen, step, losses)
    bar.close()
    train_seconds = time.perf_counter() - train_started
    curve = kept.history()
    if eval_seqs:
        adapter = kept.best
    adapter.eval()
    tail = losses[-min(20, len(losses)) :]
    check_seq = eval_seqs[0] if eval_seqs else train_seqs[0]
    info = {
        "model_key": loaded.key,
        "model_name": loaded.name,
        "model_source": loaded.source,
        "exit_layer": settings.exit_layer,
        "data": {
            "source": data_source,
            "prompts": len(prompts),
            "prompts_digest": common._digest(prompts),
            "answers": "the target's greedy answers, generated 16 prompts at a time (chat template "
            "when the tokenizer has one)",
            "max_new_tokens": settings.max_new_tokens,
            "labels": f"the target's next-token distributions, top {settings.top_labels} renormalized",
            "train_sequences": len(train_seqs),
            "eval_sequences": len(eval_seqs),
            "file": data_path.name,
        },
        "settings": asdict(settings),
        "steps": step,
        "final_loss": sum(r[0] for r in tail) / len(tail),
        "first_loss": losses[0][0] if losses else None,
        "eval_top1_agreement_untrained": first_eval,
        "eval_top1_agreement": agreement(adapter, base, lm_head, data, states, eval_seqs),
        "kept_step": int(kept.best_step) if eval_seqs else step,
        "eval_curve": curve,
        "check": {
            "sequence": check_seq,
            "top1": predictions(adapter, base, lm_head, data, states, check_seq)[:32],
        },
        "seconds": {
            "data": round(data_seconds, 1),
            "exit_states": round(exit_seconds, 1),
            "train": round(train_seconds, 1),
        },
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
    }
    save_adapter(adapter, out, info)
    remove_path(ckpt_path)
    return common.TrainResult(out, json.loads(sidecar(out).read_text()), losses)
