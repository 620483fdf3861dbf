"""Using a checkpoint: `minimind export`, `import`, `chat`, `serve`, `eval` and `bench`."""
from __future__ import annotations


def add_export(sub):
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
        from ..use.export import export_hf
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
        from ..use.gguf import export_gguf
        out = export_gguf(args.ckpt, args.out, dtype=args.dtype, name=args.name, merge_lora=args.merge_lora)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): run it with llama-cli -m {out} -cnv, or see "
              "book/use.md for an ollama Modelfile")
    gg.set_defaults(func=run_gguf)


def add_import(sub):
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
        from ..model.config import MiniMindConfig
        from ..use.minimind_import import import_pth
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

def add_chat(sub):
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
        from ..model import load_checkpoint
        from ..model.tools import toolbox
        from ..train.runtime import pick_device
        from ..use.chat import terminal_chat
        tools = toolbox(args.tools)  # a bad spec fails before the model loads
        model, tok = load_checkpoint(args.ckpt, device=pick_device(args.device))
        terminal_chat(model, tok, show_thinking=not args.hide_thinking, system=args.system,
                      enable_thinking={"auto": None, "on": True, "off": False}[args.think],
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      top_k=args.top_k, repetition_penalty=args.repetition_penalty, tools=tools,
                      max_tool_turns=args.max_tool_turns)
    p.set_defaults(func=run)


def add_serve(sub):
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
        from ..use.serve import serve
        serve(args.ckpt, host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
              device=args.device, verbose=not args.quiet, cors_origins=args.cors)
    p.set_defaults(func=run)


def add_eval(sub):
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

        from ..model import load_checkpoint
        from ..train.runtime import pick_device
        from ..use import eval as ev
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


def add_bench(sub):
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
                        "'MiniMind's code' variants (default: the copy in minimind/use/minimind_code)")
    p.add_argument("--quick", action="store_true", help="tiny preset, short runs: under a minute on a CPU")
    p.add_argument("--json", default=None, metavar="FILE", help="write the result as JSON")
    p.add_argument("--page", default=None, metavar="MD",
                   help="write the tables into this Markdown page, between the markers naming the JSON file "
                        "(book/performance.md has them)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="do not measure: print (and with --page, write) the tables of a saved result")

    def run(args):
        from ..use.bench import BenchSettings, main
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
