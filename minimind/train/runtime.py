"""Where the course runs: device choice, a short account of the environment, and stopping on signals."""
from __future__ import annotations

import contextlib
import os
import platform
import signal
import threading

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


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a resumable state; `exit_code` is 130 or 143."""

    def __init__(self, step: int, out_dir, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}"
                         + (f"; resumable state saved in {out_dir}: run the same command with --resume"
                            if out_dir else " (no run folder: nothing saved)"))
        self.step, self.out_dir, self.exit_code = step, out_dir, 128 + signum


@contextlib.contextmanager
def stop_requests():
    """Within the block, SIGINT and SIGTERM ask the training loop to stop after the current step (the dict it
    yields gets a "signal" key); a second SIGINT interrupts at once. Outside the main thread: no handlers."""
    requested: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def ask(signum, frame):
        if signum == signal.SIGINT and requested:  # pressed twice: stop now, not after the step
            raise KeyboardInterrupt
        requested["signal"] = signum

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
