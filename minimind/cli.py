"""The `minimind` command line (also `python -m minimind`). Each command imports its module lazily, so
`minimind --help` answers at once."""
from __future__ import annotations

import argparse
import json
import sys


def _add_course(sub):
    p = sub.add_parser("course", help="run every chapter notebook with a preset, write the report card, "
                                      "build the book")
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny, the CPU course)")
    p.add_argument("--out", default=None, help="run folder (default: runs/PRESET)")
    p.add_argument("--data", default="course", help="data source passed to the notebooks (default: course)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    p.add_argument("--only", nargs="*", default=None, help="run only these chapter numbers, e.g. 00 05")
    p.add_argument("--no-book", action="store_true", help="skip building the book")

    def run(args):
        from .course import run_course
        run_course(preset=args.preset, out=args.out, data=args.data, device=args.device, only=args.only,
                   build_book=not args.no_book)
    p.set_defaults(func=run)


def _add_export(sub):
    p = sub.add_parser("export", help="export a checkpoint to another ecosystem")
    fmt = p.add_subparsers(dest="format", required=True)
    hf = fmt.add_parser("hf", help="a transformers folder (LlamaForCausalLM, or Qwen2MoeForCausalLM for MoE) "
                                   "that loads without remote code")
    hf.add_argument("ckpt", help="MiniMind checkpoint folder (config.json + model.safetensors)")
    hf.add_argument("--out", required=True, help="output folder")

    def run(args):
        from .export import export_hf
        out = export_hf(args.ckpt, args.out)
        print(f"wrote {out}: open it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    hf.set_defaults(func=run)


def _add_info(sub):
    p = sub.add_parser("info", help="parameter counts and shapes of a preset or a checkpoint")
    p.add_argument("what", nargs="?", default=None, help="preset name or checkpoint folder (default: all presets)")

    def run(args):
        from .config import PRESETS, MiniMindConfig
        from .model import MiniMindForCausalLM
        import torch
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


def _add_train(sub):
    p = sub.add_parser("train", help="train one stage: pretrain sft lora dpo distill reason ppo grpo spo reward",
                       description="Train one stage into the run folder --out (a checkpoint: config.json, "
                                   "model.safetensors, tokenizer, metrics.jsonl, resume/). Works the same "
                                   "under `torchrun --nproc_per_node N` (DDP).")
    p.add_argument("stage", help="pretrain | sft | lora | distill | reason | dpo | ppo | grpo | spo | reward")
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
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--logger", default=None, help="wandb or swanlab, if installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("stage options")
    g.add_argument("--lora-rank", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=16.0)
    g.add_argument("--lora-targets", nargs="*", default=None, help="module names (default: attention and MLP)")
    g.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the CE term")
    g.add_argument("--temperature", type=float, default=1.0, help="distill: softmax temperature")
    g.add_argument("--tag-weight", type=float, default=1.0, help="reason: loss weight of <think> tag tokens")
    g.add_argument("--stage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other stage option (e.g. beta=0.1 for dpo); repeatable")

    def run(args):
        from .pipeline import train_stage
        stage_kwargs = dict(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
                            alpha=args.alpha, temperature=args.temperature, tag_weight=args.tag_weight)
        for item in args.stage_option:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--stage-option {item!r}: write KEY=VALUE")
            try:
                stage_kwargs[key] = json.loads(value)
            except ValueError:
                stage_kwargs[key] = value
        train_args = dict(max_steps=args.max_steps, epochs=args.epochs, max_time=args.max_time,
                          grad_accum=args.grad_accum, dtype=args.dtype, compile=args.compile,
                          save_every=args.save_every, log_every=args.log_every, eval_every=args.eval_every,
                          seed=args.seed, device=args.device, num_workers=args.num_workers, logger=args.logger,
                          progress=not args.no_progress)
        for name in ("batch_size", "lr", "warmup_steps"):
            if getattr(args, name) is not None:
                train_args[name] = getattr(args, name)
        summary = train_stage(args.stage, args.out, data=args.data, tokenizer=args.tokenizer, preset=args.preset,
                              init=args.init, teacher=args.teacher, val_data=args.val_data, seq_len=args.seq_len,
                              resume=args.resume, stage_kwargs=stage_kwargs, **train_args)
        summary.pop("model", None)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    p.set_defaults(func=run)


# Each command group registers itself here; later chapters add theirs (data, tokenizer, train, ...).
COMMANDS = [_add_course, _add_export, _add_info, _add_train]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimind", description="MiniMind from scratch: train, use and "
                                     "export a small language model")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: a clear message, not a traceback
        print(f"minimind {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
