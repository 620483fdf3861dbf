"""Where the course runs: device choice, a short account of the environment, and stopping on signals."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import signal
import subprocess
import threading
from pathlib import Path
from typing import Optional

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


# CPU features that multiply bfloat16 matrices in hardware: x86's AMX and AVX512-BF16, Arm's BF16 (Linux names)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@functools.lru_cache(maxsize=None)
def cpu_bf16_hardware() -> Optional[str]:
    """The CPU feature that does bfloat16 matrix multiplies in hardware, or None. Without one, bf16 is emulated
    and slower than float32, so `--dtype auto` keeps float32."""
    if platform.system() == "Darwin":  # Apple silicon from M2 on
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
            return "FEAT_BF16" if out.stdout.strip() == "1" else None
        except OSError:
            return None
    try:
        return bf16_flag(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def bf16_flag(cpuinfo: str) -> Optional[str]:
    """The first of BF16_CPU_FLAGS in /proc/cpuinfo's text (x86 "flags", Arm "Features" lines), or None."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return next((f for f in BF16_CPU_FLAGS if f in flags), None)


# On a CPU, bf16 autocast pays only when matrix products dominate a step. Measured on 2 cores with AVX512-BF16:
# minimind2-small (hidden 512) trains 1.7x faster; tiny (hidden 192) 1.2x in pretraining and 0.7-0.9x on SFT's short
# dialogues, where casting costs more than the products save. Smaller models stay float32 under --dtype auto.
CPU_BF16_MIN_HIDDEN = 512


def autocast_dtype(name: str, device: torch.device, hidden_size: Optional[int] = None) -> Optional[torch.dtype]:
    """The autocast dtype for `--dtype name` on `device` (None: plain float32). 'auto' is bfloat16 on a GPU
    that has it (else float16), and on a CPU with bf16 hardware for models at least CPU_BF16_MIN_HIDDEN wide."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_bf16_hardware() and (hidden_size or CPU_BF16_MIN_HIDDEN) >= CPU_BF16_MIN_HIDDEN:
            return torch.bfloat16
        return None
    choices = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in choices:
        raise ValueError(f"--dtype {name!r}: use auto, {', '.join(choices)}")
    return choices[name]


def precision_name(amp_dtype: Optional[torch.dtype]) -> str:
    return str(amp_dtype or torch.float32).replace("torch.", "")


def describe_precision(name: str, device: torch.device, hidden_size: Optional[int] = None) -> str:
    """One line saying which precision `--dtype name` gives on `device` for a model `hidden_size` wide, and why."""
    amp = autocast_dtype(name, device, hidden_size)
    if name != "auto":
        return f"precision: {precision_name(amp)}{' autocast' if amp else ''} (--dtype {name})"
    if amp is None:
        if device.type != "cpu":
            why = f"on {device.type}"
        elif not cpu_bf16_hardware():
            why = "no bf16 hardware on this CPU"
        else:
            why = (f"a model {hidden_size} wide gains nothing from this CPU's {cpu_bf16_hardware()} (from "
                   f"{CPU_BF16_MIN_HIDDEN} on it does); --dtype bfloat16 to use it anyway")
        return f"precision: float32 (--dtype auto: {why})"
    why = f"this CPU has {cpu_bf16_hardware()}" if device.type == "cpu" else "this GPU supports it"
    return f"precision: {precision_name(amp)} autocast (--dtype auto: {why}; --dtype float32 to turn it off)"


def environment() -> dict:
    device = pick_device()
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu cores": os.cpu_count(), "torch threads": torch.get_num_threads(), "device": str(device),
            "bf16 hardware": cpu_bf16_hardware() or "none"}
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
