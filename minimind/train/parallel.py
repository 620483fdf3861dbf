"""Several small training runs side by side, one CPU thread each, in their own processes.

A tiny model's matrices are too small to keep even two cores busy from one process (a rollout is hundreds of
tiny steps), so the runs a chapter repeats over seeds or algorithms go faster as separate one-thread
processes than one after another. Each run is `train_stage(**job)` in a fresh process with one thread: its
result is the one that `train_stage` gives in a one-thread process on its own (tests/test_parallel.py), so
it depends on the seed, not on how many cores the machine has.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Hashable, Iterator, Optional

import torch


def cpu_cores() -> int:
    """The cores this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _run_job(job: dict, threads: Optional[int] = 1) -> dict:
    """One run, on `threads` threads (None: as they are); its summary comes back without the model (the caller
    loads it from the run's folder), as plain values that can cross a process boundary."""
    from .run import train_stage
    if threads:
        torch.set_num_threads(threads)
    summary = train_stage(**({**job, "progress": False} if threads else job))  # a worker's prints would be lost
    summary.pop("model", None)
    return json.loads(json.dumps(summary, default=str))  # plain values only, to cross the process boundary


def _steps_done(out, since: float) -> int:
    """The last step logged in out/metrics.jsonl since `since` (0 before the run's first log: an older file,
    from a previous run into the same folder, does not count)."""
    file = Path(out, "metrics.jsonl")
    try:
        if file.stat().st_mtime < since:
            return 0
        with open(file, "rb") as f:
            f.seek(max(0, file.stat().st_size - 4096))
            lines = f.read().decode(errors="ignore").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except ValueError:  # a line cut by the seek, or being written
            continue
    return 0


def side_by_side_workers(device: str = "auto") -> int:
    """How many runs to train at once: one per core on a CPU; one on a GPU (the runs would share it)."""
    from .runtime import pick_device
    return cpu_cores() if pick_device(device).type == "cpu" else 1


def train_side_by_side(jobs: dict[Hashable, dict], workers: Optional[int] = None) -> Iterator[tuple[Hashable, dict]]:
    """Train `jobs` ({key: train_stage keyword arguments, with `stage` and `out`}) in up to `workers` one-thread
    processes (default: one per core) and yield (key, summary) as each run finishes, in the order they finish.
    A job holds only picklable values: paths, numbers, names, not a model or a tokenizer object. While the runs
    go on, this process runs one thread too (what the caller does between yields must not crowd the workers
    out) and prints about ten lines with the steps done and the time left. The workers are spawned: from a
    script, call it under `if __name__ == "__main__":`.
    With one worker (or one job) the runs go one after another in this process, on the caller's threads."""
    for key, job in jobs.items():
        if job.get("out") is None or job.get("stage") is None:
            raise ValueError(f"job {key!r} needs stage and out: the stage to train and the folder of its run")
        bad = [k for k in ("model", "callbacks") if job.get(k)]
        if bad or not isinstance(job.get("tokenizer"), (str, Path, type(None))):
            raise ValueError(f"job {key!r} passes {(bad or ['tokenizer'])[0]} as an object: a worker process cannot "
                             "receive it; pass init=FOLDER and tokenizer=FOLDER instead (the worker loads them)")
    workers = max(1, min(workers or cpu_cores(), len(jobs)))
    if workers == 1:
        for key, job in jobs.items():
            yield key, _run_job(job, threads=None)
        return
    total = sum(job.get("max_steps") or 0 for job in jobs.values()) if all(
        job.get("max_steps") for job in jobs.values()) else 0
    print(f"{len(jobs)} runs" + (f", {total} steps in all" if total else "")
          + f", {workers} at a time (one thread each)", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start, since = time.perf_counter(), time.time()
    tenth = max(1, total // 10)
    mark = tenth
    # spawn, not fork: a forked child of a process that has used OpenMP threads can hang
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = {pool.submit(_run_job, job): key for key, job in jobs.items()}
            finished: set = set()
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                elapsed = time.perf_counter() - start
                finished |= {pending[f] for f in done}
                steps = sum(job["max_steps"] if key in finished else _steps_done(job["out"], since)
                            for key, job in jobs.items()) if total else 0
                # a line at every tenth of the steps (or, without step counts, at every finished run)
                if (steps >= mark if total else done) or len(finished) == len(jobs):
                    left = f", {elapsed / steps * (total - steps):.0f} s left" if steps else ""
                    print(f"{steps}/{total} steps, " if total else "", end="")
                    print(f"{len(finished)}/{len(jobs)} runs done, {elapsed:.0f} s{left}", flush=True)
                    mark = (steps // tenth + 1) * tenth if total else 0
                for future in done:
                    key = pending.pop(future)
                    if future.exception() is not None:  # stop here: the runs not yet started are cancelled
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise future.exception()
                    yield key, future.result()
    finally:
        torch.set_num_threads(threads)
