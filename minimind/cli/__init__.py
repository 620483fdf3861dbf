"""The `minimind` command line (also `python -m minimind`). Each command imports its module lazily, so
`minimind --help` answers at once. The commands are grouped by the part of the package they drive: course.py,
data.py (data, tokenizer), train.py (info, train) and use.py (export, import, chat, serve, eval, bench)."""
from __future__ import annotations

import argparse
import os
import sys

from .course import add_course
from .data import add_data, add_tokenizer
from .train import add_info, add_train
from .use import add_bench, add_chat, add_eval, add_export, add_import, add_serve

# Each command group registers itself here; later chapters add theirs (data, tokenizer, train, ...).
COMMANDS = [add_course, add_export, add_import, add_info, add_train, add_data, add_tokenizer,
            add_chat, add_serve, add_eval, add_bench]


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
