"""The `minimind` command line (also `python -m minimind`). Each command imports its module lazily, so
`minimind --help` answers at once."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _write_result(args, result: dict, tables: str, begin: str, end: str) -> None:
    """--json FILE and --page MD of `minimind course --compare / --times / --robustness`."""
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.page:
        if not args.json:
            raise SystemExit("--page needs --json FILE: the page names the JSON its tables come from")
        from .use.bench import update_page
        update_page(args.page, result, args.json, tables=tables, begin=begin, end=end)


def _add_course(sub):
    p = sub.add_parser("course", help="run every chapter notebook with a preset, write the report card, "
                                      "build the book")
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny, the CPU course)")
    p.add_argument("--out", default=None, help="run folder (default: runs/PRESET)")
    p.add_argument("--data", default="course", help="data source passed to the notebooks (default: course)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="training precision in every chapter (auto: bfloat16 on a GPU or a CPU with bf16 "
                        "hardware, else float32)")
    p.add_argument("--only", nargs="*", default=None, help="run only these chapter numbers, e.g. 00 05")
    p.add_argument("--seed", type=int, default=0,
                   help="every training chapter's seed (chapters 11 and 14 run seeds SEED, SEED+1, ...); another "
                        "seed, or other kernels (ATEN_CPU_CAPABILITY=avx2), tests that the lessons hold")
    p.add_argument("--keep-going", action="store_true",
                   help="a chapter that fails is noted in RUN/failed.json and the next one runs (for --robustness)")
    p.add_argument("--no-book", action="store_true", help="skip building the book")
    p.add_argument("--dry-run", action="store_true",
                   help="run nothing long: validate and tokenize every stage's file, step each stage once, and "
                        "print the plan (tokens, steps, hours on an RTX 3090)")

    p.add_argument("--compare", nargs=2, default=None, metavar=("REF", "OTHER"),
                   help="run nothing: compare two finished runs' report cards (e.g. --dtype float32 and auto), "
                        "each measure against a tolerance, and their wall times")
    p.add_argument("--times", default=None, metavar="RUN",
                   help="run nothing: each chapter's wall time in a finished course run, and the whole against "
                        "the goals (a chapter at most 4 minutes, the course at most 10)")
    p.add_argument("--robustness", nargs="+", default=None, metavar="RUN",
                   help="run nothing: check every chapter's lesson in finished runs of other seeds and kernels "
                        "(mean gain above the spread across seeds); exits 1 when one does not hold")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="with --compare, --times or --robustness: write the result as JSON")
    p.add_argument("--page", default=None, metavar="MD",
                   help="with --compare, --times or --robustness: write its tables into this page between the "
                        "markers naming the JSON")

    def run(args):
        if args.robustness:
            from .course.robustness import ROBUST_BEGIN, ROBUST_END, format_robustness, robustness
            result = robustness(args.robustness)
            _write_result(args, result, format_robustness(result), ROBUST_BEGIN, ROBUST_END)
            print(format_robustness(result))
            if not result["all_hold"]:
                raise SystemExit(1)
            return
        if args.times:
            from .course.report import TIMES_BEGIN, TIMES_END, course_times, format_course_times
            result = course_times(args.times)
            _write_result(args, result, format_course_times(result), TIMES_BEGIN, TIMES_END)
            print(format_course_times(result))
            return
        if args.compare:
            from .course.report import COMPARE_BEGIN, COMPARE_END, compare_cards, format_comparison
            result = compare_cards(*args.compare, names=tuple(Path(d).name for d in args.compare))
            _write_result(args, result, format_comparison(result), COMPARE_BEGIN, COMPARE_END)
            print(format_comparison(result))
            return
        if args.dry_run:
            from .course.plan import dry_run, format_plan
            print(format_plan(dry_run(preset=args.preset, data=args.data,
                                      device="cpu" if args.device == "auto" else args.device)))
            return
        from .course.runner import run_course
        run_course(preset=args.preset, out=args.out, data=args.data, device=args.device, only=args.only,
                   build_book=not args.no_book, dtype=args.dtype, seed=args.seed,
                   keep_going=args.keep_going)
    p.set_defaults(func=run)


def _add_export(sub):
    p = sub.add_parser("export", help="export a checkpoint to another ecosystem")
    fmt = p.add_subparsers(dest="format", required=True)
    hf = fmt.add_parser("hf", help="a transformers folder that loads without remote code: LlamaForCausalLM / "
                                   "Qwen2MoeForCausalLM (MiniMind2), Qwen3ForCausalLM / Qwen3MoeForCausalLM "
                                   "(minimind-3)")
    hf.add_argument("ckpt", help="MiniMind checkpoint folder (config.json + model.safetensors)")
    hf.add_argument("--out", required=True, help="output folder")
    hf.add_argument("--merge-lora", action="store_true",
                    help="CKPT is a LoRA run folder: merge the adapter into the base model it names, export that")

    def run(args):
        from .use.export import export_hf
        out = export_hf(args.ckpt, args.out, merge_lora=args.merge_lora)
        print(f"wrote {out}: open it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    hf.set_defaults(func=run)

    gg = fmt.add_parser("gguf", help="one .gguf file for llama.cpp and ollama (BPE tokenizer, chat template): "
                                     "llama / bailingmoe for MiniMind2, qwen3 / qwen3moe for minimind-3")
    gg.add_argument("ckpt", help="MiniMind checkpoint folder with its tokenizer files")
    gg.add_argument("--out", required=True, help="output file, e.g. minimind.gguf")
    gg.add_argument("--dtype", choices=["f32", "f16"], default="f32",
                    help="weight type (default: f32; norms stay f32). Quantise further with llama-quantize")
    gg.add_argument("--name", default=None, help="model name stored in the file (default: the folder name)")
    gg.add_argument("--merge-lora", action="store_true",
                    help="CKPT is a LoRA run folder: merge the adapter into its base model first")

    def run_gguf(args):
        from .use.gguf import export_gguf
        out = export_gguf(args.ckpt, args.out, dtype=args.dtype, name=args.name, merge_lora=args.merge_lora)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): run it with llama-cli -m {out} -cnv, or see "
              "book/use.md for an ollama Modelfile")
    gg.set_defaults(func=run_gguf)


def _add_import(sub):
    p = sub.add_parser("import", help="a .pth state dict saved by MiniMind's own code into a checkpoint folder")
    p.add_argument("pth", help="e.g. full_sft_512.pth, pretrain_768.pth, full_sft_768_moe.pth")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--preset", default=None, help="the preset it was trained with (default: read the config "
                                                  "from the tensor shapes)")
    p.add_argument("--dtype", default="keep", choices=["keep", "float32", "float16", "bfloat16"],
                   help="weights dtype (default: keep the file's; MiniMind saves float16)")
    p.add_argument("--heads", type=int, default=8, help="query heads when the shapes cannot say (models without "
                                                        "q/k-norm; default 8, as every MiniMind model)")
    p.add_argument("--experts-per-token", type=int, default=None,
                   help="MoE top-k (default: 2 for MiniMind2, 1 for minimind-3)")
    p.add_argument("--tokenizer", default=None, help="folder with MiniMind's tokenizer.json to copy in (its model/)")

    def run(args):
        from .model.config import MiniMindConfig
        from .use.minimind_import import import_pth
        out = import_pth(args.pth, args.out, preset=args.preset, dtype=args.dtype, heads=args.heads,
                         experts_per_token=args.experts_per_token, tokenizer=args.tokenizer)
        config = MiniMindConfig.load(out)
        print(f"wrote {out}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, heads "
              f"{config.num_attention_heads}/{config.num_key_value_heads} kv of {config.head_dim}"
              + (", q/k-norm (minimind-3)" if config.qk_norm else "")
              + (f", {config.n_routed_experts} experts top-{config.num_experts_per_tok}" if config.use_moe else ""))
        if args.tokenizer is None:
            print("no tokenizer copied: chat, serve and eval need one (--tokenizer MINIMIND/model)")
    p.set_defaults(func=run)


def _add_info(sub):
    p = sub.add_parser("info", help="parameter counts and shapes of a preset or a checkpoint")
    p.add_argument("what", nargs="?", default=None, help="preset name or checkpoint folder (default: all presets)")

    def run(args):
        import torch

        from .model.config import PRESETS, MiniMindConfig
        from .model.transformer import MiniMindForCausalLM
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
    from .train.stages import STAGES  # the registry: every stage, its options and defaults
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
        from .train import train_stage
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


def _add_data(sub):
    p = sub.add_parser("data", help="the course corpus, MiniMind's datasets, and checking a data file")
    cmd = p.add_subparsers(dest="data_command", required=True)

    c = cmd.add_parser("course", help="generate the course corpus (deterministic: same seed, same bytes)")
    c.add_argument("--out", default="data/course", help="output folder (default: data/course)")
    c.add_argument("--seed", type=int, default=0, help="random seed of the world and its texts (default 0)")
    c.add_argument("--size", default="small", help="mini | small (CPU course, default) | large (GPU runs)")
    c.add_argument("--tokenizer", action="store_true", help="also train the course tokenizer into OUT/tokenizer")
    c.add_argument("--vocab-size", type=int, default=6400, help="tokenizer vocabulary (with --tokenizer)")

    def run_course(args):
        import json
        import time

        from .data.corpus import ensure_course_tokenizer, write_course_corpus
        start = time.perf_counter()
        paths = write_course_corpus(args.out, seed=args.seed, size=args.size)
        lines = json.loads(paths["manifest"].read_text())["lines"]
        print(f"wrote {len(lines)} files to {args.out} in {time.perf_counter() - start:.1f} s")
        for name, n in lines.items():
            print(f"  {paths[name].name:20s} {n:7d} lines")
        if args.tokenizer:
            tok = ensure_course_tokenizer(paths, f"{args.out}/tokenizer", vocab_size=args.vocab_size, retrain=True)
            print(f"tokenizer: {args.out}/tokenizer (vocab {tok.vocab_size})")
    c.set_defaults(func=run_course)

    d = cmd.add_parser("download", help="fetch one of MiniMind's published datasets from the Hugging Face hub")
    d.add_argument("name", nargs="?", default=None, help="pretrain_hq, sft_mini_512, sft_512, dpo, r1_mix_1024, "
                                                         "rlaif-mini, lora_identity or lora_medical")
    d.add_argument("--out", default="data/minimind", help="output folder (default: data/minimind)")
    d.add_argument("--repo", default=None, help="dataset repository (default: jingyaogong/minimind_dataset)")
    d.add_argument("--revision", default=None, help="branch, tag or commit of the repository")
    d.add_argument("--force", action="store_true", help="fetch again even when the file is there")
    d.add_argument("--list", action="store_true", help="list the datasets and exit")

    def run_download(args):
        from .data.download import DATASETS, REPO_ID, download_dataset
        if args.list or not args.name:
            for name, (file, kind, what) in DATASETS.items():
                print(f"{name:14s} {file:22s} {kind:9s} {what}")
            if not args.list:
                raise ValueError("name a dataset to download (listed above)")
            return
        path = download_dataset(args.name, args.out, repo_id=args.repo or REPO_ID, revision=args.revision,
                                force=args.force)
        print(f"{path}")
    d.set_defaults(func=run_download)

    b = cmd.add_parser("bench", help="tokenization speed (MB/s), peak memory, and time and memory to step 1, on "
                                     "made files of real size or on your own")
    b.add_argument("files", nargs="*", help="JSONL files to measure (default: make them from the course corpus)")
    b.add_argument("--sizes", type=float, nargs="+", default=[120], metavar="MB", help="sizes of made files "
                   "(default: 120)")
    b.add_argument("--kinds", nargs="+", default=["pretrain", "sft"], choices=["pretrain", "sft"])
    b.add_argument("--corpus", default=None, help="course corpus folder to make files from (default: made)")
    b.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the course tokenizer, made)")
    b.add_argument("--work", default=None, help="folder for the made files (default: a temporary one)")
    b.add_argument("--seq-len", type=int, default=512)
    b.add_argument("--preset", default="minimind2-small", help="model for the step-1 measurement")
    b.add_argument("--no-step", action="store_true", help="measure tokenization only")
    b.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    b.add_argument("--page", default=None, metavar="MD", help="write the table into this Markdown page, between "
                                                             "the markers naming the JSON (book/performance.md)")
    b.add_argument("--from-json", default=None, metavar="FILE", help="measure nothing: use saved results")

    def run_bench(args):
        from .course.recipe import data_paths
        from .use.bench_data import bench_data, format_markdown, write_page
        if args.from_json:
            results = json.loads(Path(args.from_json).read_text())
            print(format_markdown(results))
            if args.page:
                write_page(args.page, results, args.from_json)
            return
        corpus, tokenizer = args.corpus, args.tokenizer
        if corpus is None or tokenizer is None:
            paths = data_paths("course")
            corpus = corpus or Path(paths["pretrain"]).parent
            tokenizer = tokenizer or paths["tokenizer"]
        results = bench_data(args.sizes, tuple(args.kinds), corpus, tokenizer, args.work, args.seq_len, args.preset,
                             step=not args.no_step, files=args.files or None)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
            if args.page:
                write_page(args.page, results, args.json)
    b.set_defaults(func=run_bench)

    k = cmd.add_parser("check", help="validate a JSONL file: every line, with file:line and the fix for a bad one")
    k.add_argument("file")
    k.add_argument("--kind", default="auto", help="pretrain | sft | dpo | rl | eval | auto (default)")
    k.add_argument("--skip-bad", action="store_true", help="count and list bad lines instead of stopping")

    def run_check(args):
        from .data.records import check_file
        summary = check_file(args.file, args.kind, skip_bad=args.skip_bad)
        for line, problem in summary["bad_lines"]:
            print(f"{args.file}:{line}: {problem}")
        print(f"{args.file}: {summary['records']} good {summary['kind']} records, {summary['bad']} bad lines")
        for what, count in summary["warning_counts"].items():
            first = ", ".join(map(str, summary["warnings"][what]))
            print(f"warning: {count} conversation(s) with {what} (records {first}{', ...' if count > 5 else ''}): "
                  "they train, but rarely as meant")
        if summary["bad"]:
            raise ValueError(f"{summary['bad']} bad line(s) in {args.file}")
    k.set_defaults(func=run_check)

    v = cmd.add_parser("convert", help="convert Alpaca, ShareGPT, OpenAI-messages or text data (.jsonl, .json, "
                                       ".parquet, .arrow, a datasets folder) to MiniMind's JSONL")
    v.add_argument("src", help="input: .jsonl, .json (array), .parquet, .arrow, or a folder saved by datasets")
    v.add_argument("--out", required=True, help="output .jsonl (written whole or not at all)")
    v.add_argument("--from", dest="fmt", default="auto", choices=["auto", "alpaca", "sharegpt", "openai", "minimind",
                                                                   "text"],
                   help="input format (default: auto, from the first record)")
    v.add_argument("--to", dest="kind", default=None, choices=["pretrain", "sft", "dpo", "rl"],
                   help="output kind (default: the records' own: sft, dpo for preference pairs, pretrain for text); "
                        "sft -> rl moves the last answer into \"answer\"")
    v.add_argument("--skip-bad", action="store_true", help="count and skip bad records instead of stopping")
    v.add_argument("--system", default=None, metavar="TEXT", help="system prompt for conversations without one")

    def run_convert(args):
        from .data.convert import convert
        s = convert(args.src, args.out, fmt=args.fmt, kind=args.kind, skip_bad=args.skip_bad, system=args.system)
        print(f"{s['src']} ({s['format']}) -> {s['out']} ({s['kind']}): {s['records']} records, {s['written']} "
              f"written, {s['skipped']} skipped")
        for problem, count in sorted(s["problems"].items(), key=lambda kv: -kv[1]):
            print(f"  {count:7d} x {problem}")
        for where, problem in s["bad"]:
            print(f"  e.g. {where}: {problem}")
    v.set_defaults(func=run_convert)


def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    cmd = p.add_subparsers(dest="tokenizer_command", required=True)
    t = cmd.add_parser("train", help="train on JSONL files of any MiniMind format or plain text files; report "
                                     "bytes per token on held-out text")
    t.add_argument("--data", nargs="+", required=True, help="training files (.jsonl of any format, or text)")
    t.add_argument("--vocab-size", type=int, default=6400, help="vocabulary size (default 6400, as MiniMind)")
    t.add_argument("--out", required=True, help="output folder (tokenizer.json, tokenizer_config.json)")
    t.add_argument("--held-out", nargs="*", default=None,
                   help="texts to measure bytes per token on (default: every 50th text, kept out of training)")
    t.add_argument("--max-texts", type=int, default=None, help="train on at most this many texts")
    t.add_argument("--skip-bad", action="store_true", help="skip bad JSONL lines instead of stopping")
    t.add_argument("--template", choices=["minimind", "minimind3"], default="minimind",
                   help="chat template and added tokens: the course's (default), or minimind-3's (tools, "
                        "<think>, <tool_call>, at MiniMind's ids)")

    def run(args):
        import itertools
        import time

        from .data.records import iter_texts
        from .data.tokenizer import bytes_per_token, train_tokenizer
        held: list = []

        def training_texts():
            for i, text in enumerate(itertools.islice(iter_texts(args.data, skip_bad=args.skip_bad), args.max_texts)):
                if args.held_out is None and i % 50 == 49:
                    if len(held) < 5000:
                        held.append(text)
                    continue
                yield text
        start = time.perf_counter()
        tok = train_tokenizer(training_texts(), vocab_size=args.vocab_size, template=args.template)
        tok.save_pretrained(args.out)
        print(f"trained a vocabulary of {tok.vocab_size} in {time.perf_counter() - start:.1f} s: {args.out}")
        if args.held_out:
            held = list(iter_texts(args.held_out))
        if held:
            print(f"bytes per token on {len(held)} held-out texts: {bytes_per_token(tok, held):.3f}")
    t.set_defaults(func=run)


def _add_chat(sub):
    p = sub.add_parser("chat", help="chat with a checkpoint in the terminal (streaming, multi-turn, tools with "
                                    "--tools; /reset, /think, /exit)")
    p.add_argument("ckpt", help="checkpoint folder (or a LoRA run folder, merged into its base), or a hub id such "
                                "as jingyaogong/minimind-3")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default: 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default: 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default: 0.9)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (default: 0, off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="default: 1.0 (off)")
    p.add_argument("--think", choices=["auto", "on", "off"], default="auto",
                   help="on: the prompt opens <think> (reason first); off: an empty think block; auto: neither")
    p.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning (toggle with /think)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    p.add_argument("--tools", default="none", metavar="SPEC",
                   help="tools the model may call, run here and their results shown to it: calculator (add, "
                        "subtract, multiply, divide), course (add, subtract, lookup in data/course/registry.json), "
                        "course:PATH (another register file) or none (default). Needs a checkpoint with the "
                        "minimind3 template")
    p.add_argument("--max-tool-turns", type=int, default=4,
                   help="model turns per message when it calls tools, the answer included (default: 4)")

    def run(args):
        from .data.tools import toolbox
        from .model import load_checkpoint
        from .train.runtime import pick_device
        from .use.chat import terminal_chat
        tools = toolbox(args.tools)  # a bad spec fails before the model loads
        model, tok = load_checkpoint(args.ckpt, device=pick_device(args.device))
        terminal_chat(model, tok, show_thinking=not args.hide_thinking, system=args.system,
                      enable_thinking={"auto": None, "on": True, "off": False}[args.think],
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      top_k=args.top_k, repetition_penalty=args.repetition_penalty, tools=tools,
                      max_tool_turns=args.max_tool_turns)
    p.set_defaults(func=run)


def _add_serve(sub):
    p = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/chat/completions, /v1/completions, "
                                     "/v1/models, /health) with a web chat page at /")
    p.add_argument("ckpt", help="checkpoint folder (or a LoRA run folder, merged into its base), or a hub id such "
                                "as jingyaogong/minimind-3")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8998, help="port (default: 8998; 0 picks a free one)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: the "
                                                   "MINIMIND_API_KEY environment variable, else no key)")
    p.add_argument("--model-name", default="minimind", help="the model id clients ask for (default: minimind)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    p.add_argument("--quiet", action="store_true", help="do not log requests")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="a web origin allowed to call the API from a browser, e.g. http://localhost:3000 "
                        "(repeatable; '*' for any). Default: none (the chat page at / needs none)")

    def run(args):
        from .use.serve import serve
        serve(args.ckpt, host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
              device=args.device, verbose=not args.quiet, cors_origins=args.cors)
    p.set_defaults(func=run)


def _add_eval(sub):
    p = sub.add_parser("eval", help="perplexity / bits per byte, multiple-choice accuracy (C-Eval, CMMLU, MMLU, "
                                    "ARC, the course's eval.jsonl), exact-match accuracy")
    p.add_argument("ckpt", help="checkpoint folder (or a LoRA run folder, merged into its base), or a hub id such "
                                "as jingyaogong/minimind-3")
    p.add_argument("--ppl", nargs="+", default=[], metavar="FILE",
                   help="perplexity and bits per byte of text files (.txt, or .jsonl of {\"text\"})")
    p.add_argument("--mc", nargs="+", default=[], metavar="FILE",
                   help="multiple-choice files: C-Eval / CMMLU / MMLU .csv, ARC .json/.jsonl, course eval.jsonl")
    p.add_argument("--short", nargs="+", default=[], metavar="FILE",
                   help="short-answer .jsonl ({\"question\", \"answer\"}, or the course's eval.jsonl): exact match")
    p.add_argument("--course", default=None, metavar="EVAL_JSONL",
                   help="the course's held-out questions (eval.jsonl): short answers and multiple choice")
    p.add_argument("--style", choices=["text", "letter"], default="text",
                   help="multiple choice: score the option text (default) or its letter")
    p.add_argument("--chat", choices=["auto", "on", "off"], default="auto",
                   help="wrap questions in the chat template (auto: on for --short/--course, off for --mc)")
    p.add_argument("--limit", type=int, default=None, help="at most N questions / documents per file")
    p.add_argument("--max-new-tokens", type=int, default=48, help="exact match: reply length (default: 48)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results (with per-question rows)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")

    def run(args):
        import json

        from .model import load_checkpoint
        from .train.runtime import pick_device
        from .use import eval as ev
        if not (args.ppl or args.mc or args.short or args.course):
            raise ValueError("nothing to evaluate: give --ppl FILE, --mc FILE, --short FILE or --course EVAL_JSONL")
        model, tok = load_checkpoint(args.ckpt, device=pick_device(args.device))
        chat = {"on": True, "off": False, "auto": None}[args.chat]
        results = {}
        for f in args.ppl:
            r = results[f"ppl:{f}"] = ev.perplexity(model, tok, f, limit=args.limit)
            print(f"{f}: perplexity {r['perplexity']:.3f}  bits/byte {r['bits_per_byte']:.4f}  "
                  f"({r['tokens']} tokens, {r['documents']} documents)")
        for f in args.mc:
            r = results[f"mc:{f}"] = ev.multiple_choice_accuracy(model, tok, f, chat=bool(chat), style=args.style,
                                                                 limit=args.limit)
            print(f"{f}: accuracy {r['accuracy']:.3f}  per-byte {r['accuracy_norm']:.3f}  chance {r['chance']:.3f}"
                  f"  ({r['n']} questions)")
        for f in args.short:
            r = results[f"short:{f}"] = ev.exact_match_accuracy(model, tok, f, chat=chat is not False,
                                                                max_new_tokens=args.max_new_tokens, limit=args.limit)
            print(f"{f}: exact match {r['accuracy']:.3f} ({r['n']} questions)"
                  + "".join(f"  {k} {v:.3f}" for k, v in r.get("by_split", {}).items()))
        if args.course:
            r = results["course"] = ev.evaluate_course(model, tok, args.course, chat=chat is not False,
                                                       limit=args.limit)
            print(f"course short answers: {r['short']['accuracy']:.3f} ({r['short']['n']})"
                  + "".join(f"  {k} {v:.3f}" for k, v in r["short"].get("by_split", {}).items()))
            print(f"course multiple choice: {r['mc']['accuracy']:.3f}  chance {r['mc']['chance']:.3f} "
                  f"({r['mc']['n']})")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=1, ensure_ascii=False)
            print(f"wrote {args.json}")
    p.set_defaults(func=run)


def _add_bench(sub):
    p = sub.add_parser("bench", help="training and decoding throughput against transformers' Llama (same config, "
                                     "same weights, interleaved), MFU on GPUs, MoE against its dense twin, "
                                     "precision and compile")
    p.add_argument("--presets", nargs="+", default=None, metavar="P",
                   help="dense presets to compare (default: tiny minimind2-small; --quick: tiny)")
    p.add_argument("--moe-preset", default=None,
                   help="MoE preset timed against its dense twin (default: minimind2-moe; --quick: tiny's MoE "
                        "variant); 'none' skips it")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype (auto: bfloat16 on a GPU or a CPU with bf16 hardware, else float32)")
    p.add_argument("--compile", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile both models for training (auto: on for CUDA, off on CPU; "
                        "--compile alone: on)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: 32 on GPU, 4 on CPU)")
    p.add_argument("--seq-len", type=int, default=None, help="training sequence length (default: 512 on GPU, "
                                                             "256 on CPU)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of each A/B pair (default: 7; --quick: 3)")
    p.add_argument("--decode-batches", type=int, nargs="+", default=None, help="decoding batch sizes (default: 1 8)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per decoding run (default: 64)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the cores the load average leaves free, at least 1)")
    p.add_argument("--variant-presets", nargs="+", default=None, metavar="P",
                   help="dense presets for the precision and compile section: ours, transformers and MiniMind's "
                        "code in fp32 and bf16, eager and compiled (default: minimind2-small; --quick: tiny)")
    p.add_argument("--skip-variants", action="store_true", help="leave the precision and compile section out")
    p.add_argument("--variant-reps", type=int, default=None,
                   help="rounds of the precision and compile section (default: 9, or --reps; --quick: 3)")
    p.add_argument("--variant-compile", default=None, choices=["on", "off"],
                   help="the compiled variants of that section (default: on; --quick: off)")
    p.add_argument("--minimind-code", default=None, metavar="PATH",
                   help="MiniMind's model_minimind.py, or a checkout of its repository, for the section's "
                        "'MiniMind's code' variants (default: the copy under tests/fixtures/minimind_code)")
    p.add_argument("--quick", action="store_true", help="tiny preset, short runs: under a minute on a CPU")
    p.add_argument("--json", default=None, metavar="FILE", help="write the result as JSON")
    p.add_argument("--page", default=None, metavar="MD",
                   help="write the tables into this Markdown page, between the markers naming the JSON file "
                        "(book/performance.md has them)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="do not measure: print (and with --page, write) the tables of a saved result")

    def run(args):
        from .use.bench import BenchSettings, main
        make = BenchSettings.quick_settings if args.quick else BenchSettings
        given = {"presets": tuple(args.presets) if args.presets else None, "device": args.device,
                 "dtype": args.dtype, "compile": args.compile, "batch_size": args.batch_size,
                 "seq_len": args.seq_len, "threads": args.threads,
                 "decode_batches": tuple(args.decode_batches) if args.decode_batches else None,
                 "new_tokens": args.new_tokens, "minimind_code": args.minimind_code,
                 "variant_presets": () if args.skip_variants else
                 tuple(args.variant_presets) if args.variant_presets else None,
                 "variant_compile": None if args.variant_compile is None else args.variant_compile == "on"}
        if args.moe_preset is not None:
            given["moe_preset"] = None if args.moe_preset == "none" else args.moe_preset
        if args.reps is not None:
            given.update(train_reps=args.reps, decode_reps=args.reps, moe_reps=args.reps, fast_path_reps=args.reps,
                         variant_reps=args.reps)
        if args.variant_reps is not None:
            given["variant_reps"] = args.variant_reps
        main(make(**{k: v for k, v in given.items() if v is not None or k == "moe_preset"}), out=args.json,
             page=args.page, from_json=args.from_json)
    p.set_defaults(func=run)


# Each command group registers itself here; later chapters add theirs (data, tokenizer, train, ...).
COMMANDS = [_add_course, _add_export, _add_import, _add_info, _add_train, _add_data, _add_tokenizer,
            _add_chat, _add_serve, _add_eval, _add_bench]


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
        if os.environ.get("MINIMIND_DEBUG"):
            raise
        print(f"minimind {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine said no: a read-only folder, a full disk, a port in use
        if os.environ.get("MINIMIND_DEBUG"):
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"minimind {args.command}: error: {err.strerror or err}{where} (set MINIMIND_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # the training loop saved first when it could (TrainingInterrupted)
        print(f"minimind {args.command}: {stop or 'interrupted'}", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
