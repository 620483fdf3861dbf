"""Timing two or more functions fairly on a shared machine: interleaved rounds, paired ratios, and the facts
about the machine a result should carry (CPU, threads, load average)."""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch


def auto_threads() -> int:
    """CPU threads for torch: the cores the load average leaves free, at least 1. On a busy machine
    more threads than free cores make every parallel op wait for a descheduled thread (tens of times
    slower for small ops), so fewer threads measure the code instead of the scheduler."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(cores, round(cores - load)))


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow[i] / fast[i]: each round's two runs saw about the same machine load,
    which a ratio of the two medians would not guarantee on a busy machine."""
    return statistics.median(a / b for a, b in zip(slow, fast))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], None]], reps: int, device: torch.device,
                settle: bool = False, min_sample_s: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each function, sampled in turn `reps` times after one warm-up, the order
    reversed every other round (A B, B A, A B, ...) so that neither side always runs first.

    settle=True calls each function once more, untimed, right before its timed sample: the first call
    after a different function pays for the memory that one left behind (the allocator's free lists, pages
    the kernel has to map again), which would be charged to whichever side runs second.
    min_sample_s: each sample times enough calls for the fastest function to run this long (the same count
    for every function) and reports their mean; on a shared machine one short call is mostly noise."""
    warm = {}
    for name, fn in fns.items():
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        warm[name] = time.perf_counter() - t0
    calls = max(1, math.ceil(min_sample_s / max(min(warm.values()), 1e-9))) if min_sample_s else 1
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            if settle:
                fn()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def warm_compiled(fn: Callable[[], None], device, max_calls: int = 8) -> float:
    """Call a compiled step until two calls in a row take about as long (compiling, lazy backward and
    recompiles done); returns the seconds of the first call, compiling included."""
    times = []
    for _ in range(max_calls):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and abs(times[-1] - times[-2]) <= 0.25 * times[-2]:
            break
    return times[0]
