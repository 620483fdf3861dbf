"""`minimind info` (a model's shape) and `minimind train` (one stage, its options read from the stage
registry)."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields


def add_info(sub):
    p = sub.add_parser("info", help="parameter counts and shapes of a preset or a checkpoint")
    p.add_argument("what", nargs="?", default=None, help="preset name or checkpoint folder (default: all presets)")

    def run(args):
        import torch

        from ..model.config import PRESETS, MiniMindConfig
        from ..model.transformer import MiniMindForCausalLM
        names = [args.what] if args.what else list(PRESETS)
        for name in names:
            config = (MiniMindConfig.from_preset(name) if name in PRESETS else MiniMindConfig.load(name))
            with torch.device("meta"):
                model = MiniMindForCausalLM(config)
            print(f"{name:18s} {model.num_parameters() / 1e6:7.1f}M params  hidden {config.hidden_size}  "
                  f"layers {config.num_hidden_layers}  heads {config.num_attention_heads}/"
                  f"{config.num_key_value_heads} kv  vocab {config.vocab_size}"
                  + (f"  experts {config.n_shared_experts}+{config.n_routed_experts} top-"
                     f"{config.num_experts_per_tok}" if config.use_moe else ""))
    p.set_defaults(func=run)


# TrainArgs' fields on the command line, with their help; defaults are read from TrainArgs (the stage's own
# defaults, where it has them, come first), so they are written in one place
TRAIN_ARGS = {
    "device": "auto (CUDA, then MPS, then CPU), cpu, cuda, mps",
    "max_steps": "optimizer steps (default: --epochs)",
    "epochs": "passes over the data",
    "max_time": "seconds; stop and save when exceeded",
    "batch_size": "sequences per process and micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate (warm-up, then cosine decay)",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "dtype": "autocast dtype; auto: bfloat16 on a GPU or a CPU with bf16 hardware, else float32",
    "compile": "torch.compile the model",
    "save_every": "steps between resumable checkpoints (0: only at the end)",
    "log_every": "steps between metrics.jsonl records",
    "eval_every": "steps between evaluations (0: only at the end)",
    "seed": "seed of the weights and the data order",
    "num_workers": "data loader processes (-1: 4 on CUDA, 0 on CPU)",
    "group_by_length": "batches of similar lengths (chat data): less padding, faster on a GPU",
    "logger": "wandb or swanlab, if installed",
}
STAGE_DEFAULTS = ("batch_size", "lr", "warmup_steps")  # fields that stages set defaults for


def add_train_args(p) -> None:
    from ..train.loop import TrainArgs
    defaults = {f.name: f.default for f in fields(TrainArgs)}
    types = {"max_steps": int, "max_time": float, "logger": str}  # the fields whose default is None
    for name, help_ in TRAIN_ARGS.items():
        default, flag = defaults[name], "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None, help=help_)
            continue
        if "default" not in help_ and default is not None:
            shown = "the stage's" if name in STAGE_DEFAULTS else default
            help_ += f" (default: {shown})"
        choices = ["auto", "float32", "bfloat16", "float16"] if name == "dtype" else None
        p.add_argument(flag, type=types.get(name, type(default)), default=None, choices=choices, help=help_)


def add_train(sub):
    from ..train.stages import STAGES  # the registry: every stage, its options and defaults
    stages = "\n".join(f"  {name:9s} {cls.help}" for name, cls in STAGES.items())
    p = sub.add_parser("train", help=f"train one stage: {' '.join(STAGES)}",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train one stage into the run folder --out (a checkpoint: config.json, "
                                   "model.safetensors, tokenizer,\nmetrics.jsonl, resume/). Works the same "
                                   f"under `torchrun --nproc_per_node N` (DDP).\n\nstages:\n{stages}")
    p.add_argument("stage", metavar="STAGE", help=" | ".join(STAGES))
    p.add_argument("--preset", default="tiny", help="model preset for a fresh model (ignored with --init)")
    p.add_argument("--data", required=True, help="training JSONL in MiniMind's format for this stage")
    p.add_argument("--val-data", default=None, help="validation JSONL (val_loss every --eval-every steps)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the --init checkpoint's)")
    p.add_argument("--init", default=None, help="checkpoint to start from (e.g. pretrain for sft)")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (distill)")
    p.add_argument("--out", required=True, help="run folder to write (the new checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue exactly from --out's resume/ state")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default 256)")
    add_train_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    by_name: dict = {}  # option name -> [(stage, Option)]: one flag for each, its help naming every stage
    for stage_cls in STAGES.values():
        for name, opt in stage_cls.options.items():
            by_name.setdefault(name, []).append((stage_cls.name, opt))
    g = p.add_argument_group("stage options (each stage takes its own; unset ones keep the stage's default)")
    for name, uses in by_name.items():
        helps = dict.fromkeys(o.help + ("" if o.default is None else f" (default {o.default})") for _, o in uses)
        opt = uses[0][1]
        kind = opt.type or (type(opt.default) if opt.default is not None else str)
        if kind is bool:
            kind = lambda v: v.lower() in ("1", "true", "yes")  # noqa: E731
        g.add_argument("--" + name.replace("_", "-"), dest=f"stage__{name}", type=kind, nargs=opt.nargs,
                       default=None, metavar=name.upper(),
                       help="; ".join(helps) + f" [{', '.join(s for s, _ in uses)}]")

    def run(args):
        from ..train import train_stage
        stage_kwargs = {k[len("stage__"):]: v for k, v in vars(args).items()
                        if k.startswith("stage__") and v is not None}
        # only what was given: the rest keeps the stage's defaults, then TrainArgs'
        train_args = {name: getattr(args, name) for name in TRAIN_ARGS if getattr(args, name) is not None}
        if args.no_progress:
            train_args["progress"] = False
        summary = train_stage(args.stage, args.out, data=args.data, tokenizer=args.tokenizer, preset=args.preset,
                              init=args.init, teacher=args.teacher, val_data=args.val_data, seq_len=args.seq_len,
                              resume=args.resume, stage_kwargs=stage_kwargs, **train_args)
        summary.pop("model", None)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    p.set_defaults(func=run)
