"""`minimind info` (a model's shape) and `minimind train` (one stage, its options read from the stage
registry)."""
from __future__ import annotations

import argparse
import json


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
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: --epochs)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-time", type=float, default=None, help="seconds; stop and save when exceeded")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default 256)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype (auto: bfloat16 on a GPU or a CPU with bf16 hardware, else float32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=-1, help="data loader processes (default: 4 on CUDA, 0 on "
                                                              "CPU)")
    p.add_argument("--group-by-length", action="store_true",
                   help="batches of similar lengths (chat data): less padding, faster on a GPU")
    p.add_argument("--logger", default=None, help="wandb or swanlab, if installed")
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
        train_args = dict(max_steps=args.max_steps, epochs=args.epochs, max_time=args.max_time,
                          grad_accum=args.grad_accum, dtype=args.dtype, compile=args.compile,
                          save_every=args.save_every, log_every=args.log_every, eval_every=args.eval_every,
                          seed=args.seed, device=args.device, num_workers=args.num_workers, logger=args.logger,
                          progress=not args.no_progress, group_by_length=args.group_by_length)
        for name in ("batch_size", "lr", "warmup_steps"):
            if getattr(args, name) is not None:
                train_args[name] = getattr(args, name)
        summary = train_stage(args.stage, args.out, data=args.data, tokenizer=args.tokenizer, preset=args.preset,
                              init=args.init, teacher=args.teacher, val_data=args.val_data, seq_len=args.seq_len,
                              resume=args.resume, stage_kwargs=stage_kwargs, **train_args)
        summary.pop("model", None)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    p.set_defaults(func=run)
