"""`minimind data` (the course corpus, MiniMind's datasets, benchmarking and checking data files) and
`minimind tokenizer`."""
from __future__ import annotations

import json
from pathlib import Path


def add_data(sub):
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

        from ..data.corpus import ensure_course_tokenizer, write_course_corpus
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
        from ..data.download import DATASETS, REPO_ID, download_dataset
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
        from ..course.recipe import data_paths
        from ..use.bench_data import bench_data, format_markdown, write_page
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
        from ..data.records import check_file
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
        from ..data.convert import convert
        s = convert(args.src, args.out, fmt=args.fmt, kind=args.kind, skip_bad=args.skip_bad, system=args.system)
        print(f"{s['src']} ({s['format']}) -> {s['out']} ({s['kind']}): {s['records']} records, {s['written']} "
              f"written, {s['skipped']} skipped")
        for problem, count in sorted(s["problems"].items(), key=lambda kv: -kv[1]):
            print(f"  {count:7d} x {problem}")
        for where, problem in s["bad"]:
            print(f"  e.g. {where}: {problem}")
    v.set_defaults(func=run_convert)


def add_tokenizer(sub):
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

        from ..data.records import iter_texts
        from ..data.tokenizer import bytes_per_token, train_tokenizer
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
