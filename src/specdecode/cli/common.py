"""What several subcommands share: the device options and the torch thread count."""

from __future__ import annotations

from specdecode.errors import SpecDecodeError


def add_device_arguments(group, *, threads_help: str) -> None:
    """``--device``, ``--dtype`` and ``--threads`` (see :func:`set_threads`) on ``group``."""
    group.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    group.add_argument(
        "--dtype",
        default=None,
        help="float32, bfloat16, float16 or auto (default: float32 on CPU, the bit-exact mode; bfloat16 "
        "on CUDA). auto: the fastest the device runs natively, timed once and cached (bfloat16 on GPUs "
        "and on CPUs with avx512_bf16/amx; float32 otherwise); in bfloat16, output can differ from ar's "
        "at near-ties",
    )
    group.add_argument("--threads", type=int, default=None, help=threads_help)


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)``; None leaves torch's choice; below 1 is a SpecDecodeError."""
    if n is None:
        return
    if n < 1:
        raise SpecDecodeError(f"--threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)
