"""`minimind course --dry-run`: the GPU run checked end to end before it is paid for.

Every stage's file is validated and tokenized (into the cache the real run reuses), the preset's model is
built, one optimizer step of every stage runs (on this machine, tiny batches), and the plan is printed: samples,
tokens and steps per stage at MiniMind's own recipe, and the hours each would take on an RTX 3090 from the
model's FLOPs at the MFU that MiniMind's reported 1.1 h pretraining epoch implies.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..model.config import MiniMindConfig
from ..train.run import DATASETS, load_tokenizer, train_stage
from ..train.stages import STAGES
from ..use.bench_flops import RTX_3090, flops_per_token, peak_flops, pretrain_projection
from .recipe import data_paths


@dataclass
class StagePlan:
    """One stage of MiniMind's recipe (its trainer's defaults): data role, start, lengths, batch, epochs."""
    stage: str
    data: str
    init: str | None
    seq_len: int
    batch_size: int
    epochs: float
    new_tokens: int = 0  # RL: tokens generated per rollout
    group: int = 1       # RL: rollouts per prompt


# MiniMind's trainers (train_pretrain.py, train_full_sft.py, ...): batch sizes and epochs as they ship
RECIPE = [
    StagePlan("pretrain", "pretrain", None, 512, 32, 1),
    StagePlan("sft", "sft", "pretrain", 512, 16, 2),
    StagePlan("lora", "lora", "sft", 512, 32, 10),
    StagePlan("reason", "reason", "sft", 1024, 16, 1),
    StagePlan("distill", "sft", "sft", 512, 32, 1),
    StagePlan("dpo", "dpo", "sft", 1024, 4, 1),
    StagePlan("ppo", "rl", "sft", 512, 2, 1, new_tokens=512),
    StagePlan("grpo", "rl", "sft", 512, 2, 1, new_tokens=512, group=6),
    StagePlan("spo", "rl", "sft", 512, 2, 1, new_tokens=512),
]


def stage_tokens(stage: StagePlan, data) -> tuple[int, int]:
    """(samples, tokens one epoch trains on) of a dataset as its stage reads it."""
    if stage.data == "pretrain":
        return len(data), len(data) * stage.seq_len
    meta = data.table.meta
    if stage.data == "rl":  # prompt tokens plus what the rollouts generate
        prompts = int(data.table.lengths("prompt_ids").sum())
        return len(data), stage.group * (prompts + len(data) * stage.new_tokens)
    if stage.data == "dpo":  # chosen and rejected, each through policy and reference
        lengths = data.table.lengths("chosen_input_ids") + data.table.lengths("rejected_input_ids")
        return len(data), int(lengths.sum())
    return len(data), meta["tokens"]


def dry_run(preset: str = "minimind2-small", data: str = "course", device: str = "cpu", steps: bool = True,
            stages=None, step_batch: int = 2, step_seq_len: int = 128) -> dict:
    """Validate and tokenize every stage's file, build the model, run one step of each stage (steps=True),
    and return the plan {"rows": [...], "mfu", "gpu", "total_hours", ...}."""
    paths = data_paths(data)
    tok = load_tokenizer(paths["tokenizer"])
    config = MiniMindConfig.from_preset(preset, vocab_size=tok.vocab_size)
    projection = pretrain_projection(None, MiniMindConfig.from_preset("minimind2-small"))
    mfu, peak = projection["seed_implied_mfu"], peak_flops(RTX_3090)
    plan = [s for s in RECIPE if stages is None or s.stage in stages]
    rows, done = [], {}
    with tempfile.TemporaryDirectory(prefix="minimind-dry-run-") as work:
        for s in plan:
            t0 = time.perf_counter()
            dataset = DATASETS[STAGES[s.stage].data](paths[s.data], tok, s.seq_len)  # validates, tokenizes, caches
            samples, tokens = stage_tokens(s, dataset)
            row = dict(stage=s.stage, file=Path(paths[s.data]).name, samples=samples, seq_len=s.seq_len,
                       batch_size=s.batch_size, epochs=s.epochs,
                       steps=math.ceil(samples * s.epochs / s.batch_size), tokens=int(tokens * s.epochs),
                       prepare_seconds=round(time.perf_counter() - t0, 1))
            train_factor = 1.0
            if s.data == "dpo":  # the reference's forward pass: 1/3 of a training step's FLOPs
                train_factor = 4 / 3
            if s.data == "rl":  # rollouts decode (a forward pass, 1/3 of training), then train on them
                train_factor = 1 / 3 + 1
            row["flops"] = row["tokens"] * flops_per_token(config, s.seq_len) * train_factor
            row["hours_3090"] = row["flops"] / (mfu * peak) / 3600
            if steps:
                t0 = time.perf_counter()
                out = Path(work) / s.stage
                options = {"max_new_tokens": 8} if s.data == "rl" else {}
                if s.stage == "grpo":
                    options["group_size"] = 2
                train_stage(s.stage, out, data=paths[s.data], tokenizer=paths["tokenizer"], preset=preset,
                            init=done.get(s.init), teacher=done.get("sft") if s.stage == "distill" else None,
                            seq_len=step_seq_len, max_steps=1, batch_size=step_batch, device=device,
                            progress=False, stage_kwargs=options or None, log_every=1)
                row["step_seconds"] = round(time.perf_counter() - t0, 1)
                done[s.stage] = out if s.stage in ("pretrain", "sft") else done.get(s.stage)
            rows.append(row)
    return {"preset": preset, "data": data, "rows": rows, "gpu": RTX_3090, "gpu_peak_flops": peak, "mfu": mfu,
            "total_hours": sum(r["hours_3090"] for r in rows), "params": _params(config)}


def _params(config) -> int:
    import torch

    from ..model.transformer import MiniMindForCausalLM
    with torch.device("meta"):
        return MiniMindForCausalLM(config).num_parameters()


def _duration(hours: float) -> str:
    return f"{hours:6.2f} h" if hours >= 1 else f"{hours * 60:5.1f} min"


def format_row(r: dict) -> str:
    return (f"{r['stage']:9s} {r['file']:22s} {r['samples']:>10,d} samples {r['tokens'] / 1e6:>10.1f}M tokens "
            f"{r['steps']:>9,d} steps  {_duration(r['hours_3090']):>9s}"
            + (f"  (1 step here: {r['step_seconds']} s)" if "step_seconds" in r else ""))


def format_plan(plan: dict) -> str:
    lines = [f"plan: preset {plan['preset']} ({plan['params'] / 1e6:.1f}M parameters), data {plan['data']}; "
             f"time on one {plan['gpu']} at {plan['mfu']:.0%} MFU (what MiniMind's reported 1.1 h pretraining "
             f"epoch implies) of its {plan['gpu_peak_flops'] / 1e12:.0f} TFLOP/s bf16 peak",
             f"{'stage':9s} {'file':22s} {'samples':>18s} {'tokens':>18s} {'steps':>15s}  {'3090':>9s}"]
    lines += [format_row(r) for r in plan["rows"]]
    lines.append(f"total: {_duration(plan['total_hours']).strip()} on one {plan['gpu']}; every file validated and "
                 "tokenized (cached for the real run), every stage stepped once")
    return "\n".join(lines)
