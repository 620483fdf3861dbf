"""`minimind course`: run the chapters, or (running nothing) compare, time and check finished runs."""
from __future__ import annotations

import json
from pathlib import Path


def _write_result(args, result: dict, tables: str, begin: str, end: str) -> None:
    """--json FILE and --page MD of `minimind course --compare / --times / --robustness`."""
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.page:
        if not args.json:
            raise SystemExit("--page needs --json FILE: the page names the JSON its tables come from")
        from ..use.bench_report import update_page
        update_page(args.page, result, args.json, tables=tables, begin=begin, end=end)


def add_course(sub):
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
    p.add_argument("--report-page", default=None, metavar="MD",
                   help="run nothing: write the book's report card (book/report.md) from the committed notebooks' "
                        "records and cell timings")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="with --compare, --times or --robustness: write the result as JSON")
    p.add_argument("--page", default=None, metavar="MD",
                   help="with --compare, --times or --robustness: write its tables into this page between the "
                        "markers naming the JSON")

    def run(args):
        if args.robustness:
            from ..course.robustness import ROBUST_BEGIN, ROBUST_END, format_robustness, robustness
            result = robustness(args.robustness)
            _write_result(args, result, format_robustness(result), ROBUST_BEGIN, ROBUST_END)
            print(format_robustness(result))
            if not result["all_hold"]:
                raise SystemExit(1)
            return
        if args.report_page:
            from ..course.report import book_report
            Path(args.report_page).write_text(book_report())
            print(f"wrote {args.report_page}")
            return
        if args.times:
            from ..course.report import TIMES_BEGIN, TIMES_END, course_times, format_course_times
            result = course_times(args.times)
            _write_result(args, result, format_course_times(result), TIMES_BEGIN, TIMES_END)
            print(format_course_times(result))
            return
        if args.compare:
            from ..course.report import COMPARE_BEGIN, COMPARE_END, compare_cards, format_comparison
            result = compare_cards(*args.compare, names=tuple(Path(d).name for d in args.compare))
            _write_result(args, result, format_comparison(result), COMPARE_BEGIN, COMPARE_END)
            print(format_comparison(result))
            return
        if args.dry_run:
            from ..course.plan import dry_run, format_plan
            print(format_plan(dry_run(preset=args.preset, data=args.data,
                                      device="cpu" if args.device == "auto" else args.device)))
            return
        from ..course.runner import run_course
        run_course(preset=args.preset, out=args.out, data=args.data, device=args.device, only=args.only,
                   build_book=not args.no_book, dtype=args.dtype, seed=args.seed,
                   keep_going=args.keep_going)
    p.set_defaults(func=run)
