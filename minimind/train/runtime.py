"""Where the course runs: device choice and a short account of the environment."""
from __future__ import annotations

import os
import platform

import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA, then Apple's MPS, then the CPU; any other name is used as given."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
            "device": str(pick_device())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu memory (GiB)"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info
