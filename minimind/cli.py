"""The `minimind` command line (also `python -m minimind`). Each command imports its module lazily, so
`minimind --help` answers at once."""
from __future__ import annotations

import argparse
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


# Each command group registers itself here; later chapters add theirs (data, tokenizer, train, ...).
COMMANDS = [_add_course, _add_export, _add_info]


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
