"""The machine a measurement ran on: the CPU model, the GPU's name, the software around them.

Latency curves are cached per device name, and bench results record the machine, so that a
figure is never compared with one taken elsewhere without saying so. Import-light (torch is
imported where a device is asked about).
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    """The hardware behind ``device``: the GPU's name, or the CPU model."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (a CUDA device; nothing to wait for elsewhere), so
    that a clock read next covers it."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device) -> dict:
    """What a bench result records about the machine: CPU, cores, torch threads, platform,
    Python, and the GPU's name when ``device`` is a CUDA device."""
    import torch

    device = torch.device(device)
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
