"""Training draft heads by self-distillation: the target's own answers, its own distributions.

Data (:func:`make_data`): the target answers prompts (by default
:data:`specdecode.training.prompts.PROMPTS`, written for this and not the benchmark's) with
greedy decoding; one plain forward over each prompt + answer gives, at every position, the final
hidden state ``h_t`` and the target's next-token distribution, kept as its ``top_labels`` most
likely tokens (renormalized: they hold nearly all the mass, and the full distributions would
take gigabytes). Head ``k`` (0-based) on ``h_t`` learns the distribution at row ``t + 1 + k``,
the target's distribution of ``x_{t+2+k}``; hydra's and clover's head ``k`` also get the embeddings of
``x_{t+1} .. x_{t+1+k}`` (the answer's own tokens: teacher forcing). Positions run over the
answers only (the target's own text).

Loss: the cross-entropy of each head's distribution (the target's frozen LM head on the head's
output) against those labels, head ``k`` weighted ``0.8 ** k`` (Medusa's decay). AdamW with a
cosine schedule. A checkpoint (heads, optimizer, step, RNG) is written atomically every
``save_every`` steps and picked up again by a later run with the same settings and data; the
result is written by :func:`specdecode.training.heads.save_heads` with what it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from specdecode.errors import SpecDecodeError
from specdecode.files import atomic_file, remove_path
from specdecode.training.heads import METHODS, DraftHeads, save_heads
from specdecode.training.prompts import PROMPTS

DATA_FORMAT = "specdecode-head-data-v1"


@dataclass
class TrainSettings:
    method: str
    num_heads: int = 4
    steps: int = 600
    batch: int = 64
    lr: float = 3e-3
    top_labels: int = 16
    max_new_tokens: int = 160
    seed: int = 0
    save_every: int = 50
    eval_fraction: float = 0.1

    def check(self) -> None:
        if self.method not in METHODS:
            raise SpecDecodeError(f"cannot train {self.method!r}: trainable methods are {', '.join(METHODS)}")
        for name in ("num_heads", "steps", "batch", "top_labels", "max_new_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise SpecDecodeError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise SpecDecodeError(f"the learning rate must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    path: Path
    info: dict
    losses: list[list[float]] = field(default_factory=list)  # per step, per head


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file (``\\n`` inside a line is a newline)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecDecodeError(f"cannot read the prompts file {path}: {e}") from None
    prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SpecDecodeError(f"the prompts file {path} holds no prompt (one per line)")
    return prompts


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@torch.inference_mode()
def make_data(
    loaded,
    prompts: list[str] | list[list[int]],
    *,
    max_new_tokens: int,
    top_labels: int,
    batch: int = 16,
    progress: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """The target's greedy answers to ``prompts`` (text, or token ids as they are) with, per
    position, its final hidden state and its top ``top_labels`` next-token probabilities.

    The answers are generated ``batch`` prompts at a time (left-padded, transformers'
    ``generate``), which is several times faster on a CPU than one at a time; padding can turn
    a near-tie the other way now and then, which changes the text but not what is learned from
    it, since the labels come from a plain forward over each unpadded prompt + answer.

    Returns tensors: ``hidden`` ``[N, hidden]``, ``tokens`` ``[N]``, ``label_ids`` and
    ``label_probs`` ``[N, top_labels]`` (row ``r``: the distribution of token ``r + 1``), and per
    sequence ``start``, ``prompt_len``, ``length`` ``[S]``.
    """
    model, device = loaded.model, loaded.device
    encoded = [list(p) if isinstance(p, list) else loaded.encode_prompt(p) for p in prompts]
    eos = loaded.eos_token_ids
    pad = next(iter(sorted(eos)), 0)
    answers: list[list[int]] = []
    done = 0
    for i in range(0, len(encoded), batch):
        group = encoded[i : i + batch]
        width = max(map(len, group))
        ids = torch.tensor([[pad] * (width - len(g)) + g for g in group], device=device)
        mask = torch.tensor([[0] * (width - len(g)) + [1] * len(g) for g in group], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(eos) or None,
        )
        for row in out[:, width:].tolist():
            answer = []
            for t in row:
                answer.append(t)
                if t in eos:
                    break
            answers.append(answer)
        done += len(group)
        if progress is not None:
            progress(done, len(prompts))
    hidden, toks, lab_ids, lab_probs, starts, plens, lens = [], [], [], [], [], [], []
    offset = 0
    for ids, answer in zip(encoded, answers, strict=True):
        seq = ids + answer
        out = model(input_ids=torch.tensor([seq], device=device), output_hidden_states=True)
        probs = out.logits[0].float().softmax(-1)  # [T, vocab]
        top = torch.topk(probs, min(top_labels, probs.shape[-1]), dim=-1)
        hidden.append(out.hidden_states[-1][0].float().cpu())
        toks.append(torch.tensor(seq))
        lab_ids.append(top.indices.cpu())
        lab_probs.append(top.values.cpu())
        starts.append(offset)
        plens.append(len(ids))
        lens.append(len(seq))
        offset += len(seq)
    return {
        "hidden": torch.cat(hidden),
        "tokens": torch.cat(toks),
        "label_ids": torch.cat(lab_ids),
        "label_probs": torch.cat(lab_probs),
        "start": torch.tensor(starts),
        "prompt_len": torch.tensor(plens),
        "length": torch.tensor(lens),
    }


def positions(data: dict[str, torch.Tensor], num_heads: int, sequences: range) -> torch.Tensor:
    """Positions ``t`` of the answers in ``sequences`` whose labels for every head exist."""
    out = []
    for s in sequences:
        o, p, n = (int(data[k][s]) for k in ("start", "prompt_len", "length"))
        first, last = o + p - 1, o + n - 1 - num_heads
        if last >= first:
            out.append(torch.arange(first, last + 1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def vocab_ranking(data, idx: torch.Tensor) -> torch.Tensor:
    """Token ids by their summed label probability over the rows of positions ``idx`` and the
    rows after them (what the heads are asked to predict), most first; ids never seen left out."""
    rows = torch.unique(torch.cat([idx + 1, idx + 2]).clamp(max=len(data["tokens"]) - 1))
    mass = torch.zeros(int(data["label_ids"].max()) + 1, dtype=torch.float64, device=rows.device)
    mass.index_add_(0, data["label_ids"][rows].flatten(), data["label_probs"][rows].flatten().double())
    order = torch.argsort(mass, descending=True, stable=True)
    return order[: int((mass > 0).sum())].cpu()


def head_outputs(heads: DraftHeads, embed, data, idx: torch.Tensor) -> list[torch.Tensor]:
    """The heads' outputs ``[len(idx), hidden]`` each at positions ``idx`` (hydra teacher-forced)."""
    h = data["hidden"][idx]  # [B, hidden]
    prev = None
    if heads.method in ("hydra", "clover"):
        rows = idx[:, None] + 1 + torch.arange(heads.num_heads)  # [B, K]: x_{t+1} .. x_{t+K}
        prev = embed(data["tokens"][rows]).float()  # [B, K, hidden]
    return heads(h, prev)


def head_losses(outs, lm_head, data, idx) -> list[torch.Tensor]:
    """Per head: the cross-entropy against the target's (top-k, renormalized) distributions."""
    losses = []
    for k, out in enumerate(outs):
        rows = idx + 1 + k
        logp = lm_head(out).float().log_softmax(-1)  # [B, vocab]
        target = data["label_probs"][rows]
        target = target / target.sum(-1, keepdim=True)
        losses.append(-(target * logp.gather(-1, data["label_ids"][rows])).sum(-1).mean())
    return losses


@torch.no_grad()
def agreement(heads, lm_head, embed, data, idx) -> list[float]:
    """Per head: how often its top token is the target's top token (held-out positions)."""
    if len(idx) == 0:
        return [float("nan")] * heads.num_heads
    outs = head_outputs(heads, embed, data, idx)
    return [
        float((lm_head(o).argmax(-1) == data["label_ids"][idx + 1 + k, 0]).float().mean())
        for k, o in enumerate(outs)
    ]


def training_data(
    loaded, prompts, max_new_tokens: int, top_labels: int, out: Path, data_source: str, progress: bool, log
) -> tuple[dict[str, torch.Tensor], Path, float]:
    """The training text and labels (:func:`make_data`) for ``loaded`` and ``prompts``: made once,
    kept beside ``out`` (shared by every method trained there), reused when it is for the same
    model, prompts and settings. Returns ``(data, its file, seconds spent)``."""
    from tqdm import tqdm

    data_key = _digest([DATA_FORMAT, loaded.key, prompts, max_new_tokens, top_labels])
    data_path = out.with_name(f"training-data-{data_key}.safetensors")  # shared by the methods
    started = time.perf_counter()
    data = _read_data(data_path)
    if data is None:
        log(f"generating training text: the target answers {len(prompts)} prompts ({data_source})")
        bar = tqdm(total=len(prompts), desc="data", unit="prompt", disable=not progress)

        def tick(done, total):
            bar.n = done
            bar.refresh()

        data = make_data(loaded, prompts, max_new_tokens=max_new_tokens, top_labels=top_labels, progress=tick)
        bar.close()
        data = {k: v.clone() for k, v in data.items()}  # ordinary tensors (made in inference mode)
        _write_data(data_path, data)
    return data, data_path, time.perf_counter() - started


def cosine_lr(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first few steps, then cosine decay to zero at ``steps``."""
    warm = min(20, steps // 10 + 1)
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def train_heads(
    loaded,
    settings: TrainSettings,
    out: Path,
    *,
    prompts: list[str] | list[list[int]] | None = None,
    data_source: str = "built-in prompts (specdecode.training.prompts)",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> TrainResult:
    """Train ``settings.method`` heads for ``loaded`` and save them at ``out`` (+ JSON sidecar).

    Resumes from ``out``'s checkpoint (``<out>.ckpt``) when it was written for the same model,
    settings and data. Writes data and checkpoint beside ``out``; removes the checkpoint when done.
    """
    from tqdm import tqdm

    settings.check()
    out = Path(out)
    prompts = PROMPTS if prompts is None else prompts
    torch.manual_seed(settings.seed)
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    lm_head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    hidden_size = int(model.config.get_text_config().hidden_size)

    data, data_path, data_seconds = training_data(
        loaded, prompts, settings.max_new_tokens, settings.top_labels, out, data_source, progress, log
    )
    n_seq = len(data["start"])
    n_eval = int(n_seq * settings.eval_fraction) if n_seq >= 4 else 0
    train_pos = positions(data, settings.num_heads, range(n_seq - n_eval))
    eval_pos = positions(data, settings.num_heads, range(n_seq - n_eval, n_seq))
    if len(train_pos) == 0:
        raise SpecDecodeError("the training text is too short for the heads: give more or longer prompts")
    data["hidden"] = data["hidden"].to(loaded.device, loaded.dtype)
    for k in ("tokens", "label_ids", "label_probs"):
        data[k] = data[k].to(loaded.device)
    train_pos, eval_pos = train_pos.to(loaded.device), eval_pos.to(loaded.device)

    # ---- model, optimizer, and the checkpoint to resume from
    heads = DraftHeads(settings.method, settings.num_heads, hidden_size).to(loaded.device, loaded.dtype)
    opt = torch.optim.AdamW(heads.parameters(), lr=settings.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed)
    ckpt_path = out.with_name(out.name + ".ckpt")
    data_key = data_path.stem.removeprefix("training-data-")
    run_key = _digest([asdict(settings) | {"steps": 0}, loaded.key, data_key])
    step, losses = 0, []
    resumed = _read_checkpoint(ckpt_path, run_key)
    if resumed is not None:
        heads.load_state_dict(resumed["heads"])
        opt.load_state_dict(resumed["opt"])
        gen.set_state(resumed["rng"])
        step, losses = int(resumed["step"]), resumed["losses"]
        log(f"resuming from {ckpt_path} at step {step}")
    weights = [0.8**k for k in range(settings.num_heads)]

    bar = tqdm(
        total=settings.steps, initial=step, desc=f"train {settings.method}", unit="step", disable=not progress
    )
    train_started = time.perf_counter()
    while step < settings.steps:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, settings.steps, settings.lr)
        idx = train_pos[torch.randint(len(train_pos), (settings.batch,), generator=gen).to(train_pos.device)]
        per_head = head_losses(head_outputs(heads, embed, data, idx), lm_head, data, idx)
        loss = sum(w * x for w, x in zip(weights, per_head, strict=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append([float(x.detach()) for x in per_head])
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", head1=f"{losses[-1][0]:.3f}")
        if step % settings.save_every == 0 and step < settings.steps:
            _write_checkpoint(ckpt_path, run_key, heads, opt, gen, step, losses)
    bar.close()
    train_seconds = time.perf_counter() - train_started
    heads.eval()
    heads.vocab_rank = vocab_ranking(data, torch.cat([train_pos, eval_pos]))
    tail = losses[-min(20, len(losses)) :]
    check_idx = eval_pos[:16] if len(eval_pos) else train_pos[:16]
    with torch.no_grad():
        predictions = [lm_head(o).argmax(-1).tolist() for o in head_outputs(heads, embed, data, check_idx)]
    info = {
        "model_key": loaded.key,
        "model_name": loaded.name,
        "model_source": loaded.source,
        "data": {
            "source": data_source,
            "prompts": len(prompts),
            "prompts_digest": _digest(prompts),
            "answers": "the target's greedy answers, generated 16 prompts at a time (chat template "
            "when the tokenizer has one)",
            "max_new_tokens": settings.max_new_tokens,
            "labels": f"the target's next-token distributions, top {settings.top_labels} renormalized",
            "train_positions": len(train_pos),
            "eval_positions": len(eval_pos),
            "file": data_path.name,
        },
        "settings": asdict(settings),
        "steps": step,
        "final_losses": [sum(r[k] for r in tail) / len(tail) for k in range(settings.num_heads)],
        "first_losses": losses[0] if losses else None,
        "eval_top1_agreement": agreement(heads, lm_head, embed, data, eval_pos),
        "check": {"positions": check_idx.tolist(), "top1": predictions},
        "seconds": {"data": round(data_seconds, 1), "train": round(train_seconds, 1)},
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
    }
    save_heads(heads, out, info)
    remove_path(ckpt_path)
    return TrainResult(out, json.loads(out.with_suffix(".json").read_text()), losses)


def _read_data(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None  # a damaged file: made again


def _write_data(path: Path, data: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in data.items()}, str(tmp), metadata={"format": DATA_FORMAT})


def _read_checkpoint(path: Path, run_key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged checkpoint: start over
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("run_key") == run_key else None


def _write_checkpoint(path, run_key, heads, opt, gen, step, losses) -> None:
    state = {
        "run_key": run_key,
        "heads": heads.state_dict(),
        "opt": opt.state_dict(),
        "rng": gen.get_state(),
        "step": step,
        "losses": losses,
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
