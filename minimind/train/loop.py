"""One training loop for every stage: the stage gives the batches and the loss; the loop does the rest
(AdamW, warmup + cosine, accumulation, clipping, autocast, torch.compile, DDP, metrics.jsonl, atomic
checkpoints, exact resumption)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from ..data.datasets import pad_collate
from ..data.files import atomic_write
from . import state as ckpt
from .runtime import TrainingInterrupted, autocast_dtype, describe_precision, pick_device, precision_name, stop_requests
from .stages import Stage


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainArgs:
    max_steps: Optional[int] = None    # optimizer steps; None: `epochs` over the data
    epochs: float = 1.0
    max_time: Optional[float] = None   # seconds; stop (and save) when exceeded
    stop_at: Optional[int] = None      # stop (and save) after this step, keeping max_steps' schedule
    batch_size: int = 16               # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 5e-4
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    dtype: str = "auto"                # auto (bf16 where the hardware has it) | float32 | bfloat16 | float16
    compile: bool = False
    save_every: int = 0                # steps between resumable checkpoints (0: only at the end)
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 20
    seed: int = 0
    device: str = "auto"
    num_workers: int = -1              # data loader processes; -1: 4 on CUDA (with prefetch), 0 elsewhere
    group_by_length: bool = False      # batches of similar lengths (chat data): less padding on a GPU
    logger: Optional[str] = None       # wandb | swanlab, if installed
    progress: bool = True


def lr_at(step: int, total: int, args: TrainArgs) -> float:
    """Linear warmup, then cosine from lr down to lr * min_lr_ratio."""
    if args.warmup_steps and step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Endless batches of indices from a seeded permutation per epoch, starting after `consumed` micro-batches;
    each global batch is split in contiguous per-rank chunks (N processes see what one with N x the batch sees).

    With `lengths`, each run of `group` global batches of the permutation is sorted by length before it is cut
    into batches, and those batches are shuffled: similar lengths share a batch (little padding) while the
    order stays random. The order is a function of (seed, epoch) alone, so --resume still lands exactly."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, consumed: int = 0,
                 lengths=None, group: int = 64):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch == 0:
            raise ValueError(f"{n} samples cannot fill one batch of {batch_size} x {world} processes; "
                             "lower --batch-size or add data")
        self.consumed = consumed
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.group = group
        self._epoch, self._order = None, None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Every index once, (n,) int64: kept as a tensor, since a list of millions of ints costs ~100 MB."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.lengths is None:
            return perm
        size = self.batch_size * self.world  # a global batch
        span = size * self.group
        batches = []
        for start in range(0, self.per_epoch * size, span):
            chunk = perm[start:min(start + span, self.per_epoch * size)]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            batches += list(chunk.split(size))
        order = torch.randperm(len(batches), generator=g).tolist()
        return torch.cat([batches[i] for i in order])

    def __iter__(self):
        step = self.consumed
        while True:
            epoch, b = divmod(step, self.per_epoch)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, self.epoch_order(epoch)
            start = (b * self.world + self.rank) * self.batch_size
            yield self._order[start:start + self.batch_size].tolist()
            step += 1

    def __len__(self):
        return self.per_epoch


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _to(batch, device):
    if not isinstance(batch, dict):  # a rollout: made on the model's device already
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def make_optimizer(model, args: TrainArgs, device, extra_groups=()):
    """AdamW: weight decay on matrices, none on 1-D parameters; extra_groups (a critic, say) keep their own "lr".
    The schedule scales each group's "base_lr"."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the stage left no trainable parameter")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay, "lr": args.lr},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": args.lr}]
    groups += [{"weight_decay": args.weight_decay, **g} for g in extra_groups]
    for g in groups:
        g["base_lr"] = g["lr"]
    # fused: one kernel per step for all parameters (on CPU too: 348 -> 72 ms per step for minimind2-small)
    return torch.optim.AdamW(groups, lr=args.lr, betas=tuple(args.betas), fused=device.type in ("cuda", "cpu"))


def clean_run_folder(out_dir: Path, keep_metrics_to: Optional[int]) -> None:
    """Before a run writes into out_dir: remove temporary files a killed run left, and start metrics.jsonl
    afresh (a new run) or cut it back to the resumed step (records a killed run wrote after its last save
    would otherwise appear twice)."""
    for tmp in out_dir.glob(".*.tmp"):
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    file = out_dir / "metrics.jsonl"
    if file.exists():
        kept = [r for r in read_metrics(out_dir) if keep_metrics_to is not None and r.get("step", 0) <= keep_metrics_to]
        atomic_write(file, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in kept)))


class MetricsLog:
    """metrics.jsonl in the run folder (rank 0 only), plus wandb/swanlab when asked for and installed."""

    def __init__(self, run_dir: Optional[Path], enabled: bool, logger: Optional[str], config: dict):
        self.file = Path(run_dir) / "metrics.jsonl" if run_dir and enabled else None
        self.backend = None
        if enabled and logger:
            try:
                self.backend = __import__(logger)
                self.backend.init(project="minimind", config=config)
            except ImportError:
                print(f"--logger {logger}: the package is not installed; logging to metrics.jsonl only")

    def write(self, record: dict) -> None:
        if self.file:
            with self.file.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.backend:
            self.backend.log(record, step=record.get("step"))


def read_metrics(run_dir) -> list[dict]:
    file = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.exists() else []


@dataclass
class Run:
    """Everything one training run holds between steps: the model as trained (`net`: compiled and/or DDP-wrapped)
    and as saved (`model`), the optimizer, the data, and the counters that resumption restores."""
    model: torch.nn.Module
    net: torch.nn.Module
    stage: Stage
    args: TrainArgs
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    batches: Iterator
    total: int
    state: dict        # step, consumed (micro-batches), tokens, elapsed, stage: what a resume restores
    out_dir: Optional[Path]
    tokenizer: Any
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def save(self) -> None:
        """The model (the stage's way) and the resume state, both written atomically."""
        if self.out_dir is None:
            return
        if self.is_main:
            self.stage.save(self.model, self.out_dir, self.tokenizer)
            ckpt.save_resume_state(self.out_dir, self.stage.state_tensors(self.model), self.optimizer, self.state,
                                   self.scaler)
        if self.world > 1:
            torch.distributed.barrier()


class Tally:
    """What the steps since the last metrics record add up to: loss and metric sums, tokens, padding."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.loss, self.metrics, self.n = torch.zeros((), device=self.device), {}, 0
        self.tokens, self.since = 0, time.perf_counter()
        self.padded, self.positions = torch.zeros((), device=self.device), 0  # padding of chat data

    def add(self, loss, metrics: dict, tokens: int, batch) -> None:
        self.loss += loss.detach().float()
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0) + v.float()
        self.n += 1
        self.tokens += tokens
        if isinstance(batch, dict) and "attention_mask" in batch:
            mask = batch["attention_mask"]  # (B, T): 0 on padding
            self.positions += mask.numel()
            self.padded += (mask == 0).sum()  # on the device: no sync per micro-batch

    def means(self, world: int) -> dict:
        """The loss and the stage's metrics, each its mean over the micro-batches since the last record."""
        names = sorted(self.metrics)
        values = torch.stack([self.loss] + [self.metrics[k] for k in names]) / self.n  # (1 + M,)
        if world > 1:  # the mean over all processes, as one process with the whole batch would see
            torch.distributed.all_reduce(values)
            values /= world
        return {"loss": values[0].item(), **{k: values[i + 1].item() for i, k in enumerate(names)}}

    def tokens_per_s(self) -> float:
        return self.tokens / (time.perf_counter() - self.since)


def optimizer_step(run: Run, tally: Tally) -> None:
    """One optimizer step: grad_accum micro-batches (an RL stage generates its rollouts for them first), each
    forward and backward under autocast, then gradient clipping and AdamW."""
    args, world = run.args, run.world
    for micro, batch in enumerate(run.stage.step_batches(run.net, run.batches, args.grad_accum)):
        batch = _to(batch, run.device)  # {"input_ids": (B, T), "labels": (B, T), ...}, or an RL rollout
        sync = micro == args.grad_accum - 1 or world == 1  # DDP all-reduces grads on the last micro-batch only
        ctx = run.net.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
        with ctx, run.autocast():
            loss, metrics = run.stage.loss(run.net, batch)  # scalar; metrics: {name: scalar tensor}
        run.scaler.scale(loss / args.grad_accum).backward()  # grads sum over the micro-batches: their mean
        tally.add(loss, metrics, run.stage.batch_tokens(batch) * world, batch)
    if args.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], args.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def train(model, stage: Stage, train_data, args: TrainArgs, out_dir=None, collate_fn=None, val_data=None,
          tokenizer=None, resume: bool = False, callbacks: tuple[Callable, ...] = ()) -> dict:
    """Train `model` on `train_data` with `stage`'s loss; returns the last metrics record plus steps, tokens,
    wall_time. callbacks: f(step, model) -> dict, merged into the record at every eval point."""
    collate_fn = collate_fn or stage.collate_fn or pad_collate
    run = start_run(model, stage, train_data, args, out_dir, collate_fn, tokenizer, resume)
    state, log = run.state, run_log(run, resume)
    progress = Progress(run) if args.progress and run.is_main else None
    model.train()
    start = time.perf_counter() - state["elapsed"]
    tally, summary = Tally(run.device), {}
    with stop_requests() as requested:  # Ctrl-C / SIGTERM: finish the step, save, then stop
        while state["step"] < run.total:
            lr = lr_at(state["step"], run.total, args)
            for group in run.optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr / args.lr
            optimizer_step(run, tally)
            state["step"] += 1
            step = state["step"]
            state["elapsed"] = time.perf_counter() - start
            last = (step == run.total or (args.max_time and state["elapsed"] > args.max_time)
                    or (args.stop_at is not None and step >= args.stop_at) or bool(requested))
            evaluating = bool(args.eval_every) and (step % args.eval_every == 0 or last)
            if step % args.log_every == 0 or last or evaluating:
                means = tally.means(run.world)
                record = {"step": step, "loss": means.pop("loss"), "lr": lr, **means,
                          "tokens_per_s": tally.tokens_per_s(), "elapsed": state["elapsed"]}
                if tally.positions:
                    record["padding_fraction"] = tally.padded.item() / tally.positions
                state["tokens"] += tally.tokens
                tally.reset()
                if evaluating:
                    record.update(evaluate_run(run, val_data, collate_fn, callbacks, step))
                    tally.since = time.perf_counter()  # evaluation time is not training throughput
                log.write(record)
                summary = record
                if progress:
                    progress.show(record, last)
            if progress:
                progress.advance()
            if args.save_every and step % args.save_every == 0 and not last:
                run.save()
            if last:
                break
    if progress:
        progress.close()
    run.save()
    summary = {**summary, "steps": state["step"], "tokens": state["tokens"] + tally.tokens,
               "wall_time": state["elapsed"], "precision": precision_name(run.amp_dtype)}
    if run.world > 1:
        torch.distributed.barrier()
    if requested and state["step"] < run.total:
        raise TrainingInterrupted(state["step"], run.out_dir, requested["signal"])
    return summary


def start_run(model, stage: Stage, train_data, args: TrainArgs, out_dir, collate_fn, tokenizer, resume) -> Run:
    """The process group (under torchrun), seeds, device, optimizer, precision, the resumed state, the loader."""
    rank, world, local_rank = distributed_env()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    device = pick_device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    out_dir = Path(out_dir) if out_dir else None
    if out_dir and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    stage.setup(model, device)
    model.to(device)
    optimizer = make_optimizer(model, args, device, stage.param_groups(args))
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)  # on a CPU, small models stay float32
    amp_dtype = autocast_dtype(args.dtype, device, hidden)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = {"step": 0, "consumed": 0, "tokens": 0, "elapsed": 0.0, "stage": stage.name}
    if resume:
        resume_state(out_dir, stage, model, optimizer, scaler, state, device)

    lengths = train_data.lengths() if args.group_by_length and hasattr(train_data, "lengths") else None
    sampler = ResumableBatchSampler(len(train_data), args.batch_size, args.seed, rank, world, state["consumed"],
                                    lengths=lengths)
    total = args.max_steps or max(1, math.ceil(args.epochs * sampler.per_epoch / args.grad_accum))
    workers = args.num_workers if args.num_workers >= 0 else (4 if device.type == "cuda" else 0)
    # on a GPU, worker processes read and collate the next batches into pinned memory while it computes
    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, collate_fn=collate_fn,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if workers else None, persistent_workers=workers > 0)

    def counted(loader):  # the data position to resume from: micro-batches taken from the loader
        for batch in loader:
            state["consumed"] += 1
            yield batch
    net = torch.compile(model) if args.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    return Run(model, net, stage, args, optimizer, scaler, device, amp_dtype, counted(loader), total, state,
               out_dir, tokenizer, rank, world)


def resume_state(out_dir, stage: Stage, model, optimizer, scaler, state: dict, device) -> None:
    """Weights, optimizer moments, scaler, counters and random-number states from out_dir's resume folder."""
    found = ckpt.find_resume_state(out_dir) if out_dir else None
    if found is None:
        raise FileNotFoundError(f"--resume: no resume state in {out_dir}; start without --resume")
    try:
        model_t, opt_t, rng_t, meta = ckpt.load_resume_state(found)
        stage.load_state_tensors(model, {k: v.to(device) for k, v in model_t.items()})
        ckpt.optimizer_from_tensors(optimizer, opt_t, meta["optimizer"])
        if meta["scaler"]:
            scaler.load_state_dict(meta["scaler"])
        state.update(meta["trainer"])
        ckpt.set_rng_state(rng_t, meta["rng"])
    except Exception as err:  # a cut file, a missing key, a shape that no longer fits: all mean damaged
        raise ValueError(f"--resume: the state in {found} cannot be read ({type(err).__name__}: {err}); "
                         "delete that folder and start without --resume, or restore it") from None


def run_log(run: Run, resume: bool) -> "MetricsLog":
    """metrics.jsonl, started afresh (or cut back to the resumed step), with the run's settings for a logger."""
    if run.out_dir and run.is_main:
        clean_run_folder(run.out_dir, keep_metrics_to=run.state["step"] if resume else None)
    config = {**asdict(run.args), "stage": run.stage.name, "precision": precision_name(run.amp_dtype)}
    return MetricsLog(run.out_dir, run.is_main, run.args.logger, config)


def evaluate_run(run: Run, val_data, collate_fn, callbacks, step: int) -> dict:
    """val_loss on val_data (if any) and what each callback(step, model) returns; the model back in training."""
    record = {}
    if val_data is not None:
        record["val_loss"] = evaluate(run.model, run.stage, val_data, run.args, collate_fn, run.device, run.amp_dtype)
    for callback in callbacks:
        record.update(callback(step, run.model) or {})
    run.model.train()
    return record


class Progress:
    """A live bar in a terminal; elsewhere (notebooks, logs) about ten plain lines with the time left."""

    def __init__(self, run: Run):
        self.name, self.total, self.first = run.stage.name, run.total, run.state["step"]
        self.start = time.perf_counter()
        self.bar, self.every = None, 0
        log_every = run.args.log_every
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=run.total, initial=run.state["step"], desc=run.stage.name, dynamic_ncols=True)
        else:
            self.every = max(log_every, math.ceil(run.total / 10 / log_every) * log_every)
        hidden = getattr(getattr(run.model, "config", None), "hidden_size", None)
        print(f"{run.stage.name}: {describe_precision(run.args.dtype, run.device, hidden)}", flush=True)

    def show(self, record: dict, last: bool) -> None:
        step = record["step"]
        if self.every and (step % self.every == 0 or last):
            extra = f" val_loss {record['val_loss']:.3f}" if "val_loss" in record else ""
            left = (time.perf_counter() - self.start) / max(step - self.first, 1) * (self.total - step)
            print(f"{self.name} step {step}/{self.total}  loss {record['loss']:.3f}{extra}  lr {record['lr']:.1e}  "
                  f"{record['tokens_per_s']:,.0f} tok/s  {record['elapsed']:.0f} s, {left:.0f} s left", flush=True)
        if self.bar:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}",
                                 tok_s=f"{record['tokens_per_s']:.0f}")

    def advance(self) -> None:
        if self.bar:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def train_records(model, stage: Stage, data, out_dir=None, tokenizer=None, **train_args) -> list[dict]:
    """Train with `stage` (train_args: TrainArgs fields; log_every=1, no progress bar) and return every step's
    metrics record. Without out_dir the run goes to a temporary folder."""
    import tempfile
    args = TrainArgs(**{"log_every": 1, "progress": False, **train_args})
    if out_dir is not None:
        train(model, stage, data, args, out_dir, tokenizer=tokenizer)
        return read_metrics(out_dir)
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoint files land here too, then vanish
        train(model, stage, data, args, tmp, tokenizer=tokenizer)
        return read_metrics(tmp)


@torch.no_grad()
def evaluate(model, stage: Stage, data, args: TrainArgs, collate_fn=None, device=None, amp_dtype=None) -> float:
    """Mean stage loss over up to args.eval_batches batches of `data`, in order (same every call)."""
    collate_fn = collate_fn or stage.collate_fn or pad_collate
    device = device or next(model.parameters()).device
    model.eval()
    losses = []
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, collate_fn=collate_fn)
    for i, batch in enumerate(loader):
        if i >= args.eval_batches:
            break
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses.append(stage.loss(model, _to(batch, device))[0].float())
    return torch.stack(losses).mean().item() if losses else float("nan")
