"""`minimind data bench`: how fast data is tokenized, what memory it takes, and how long a run waits before
step 1, on files of real size.

Each measurement runs in a fresh Python process, so its peak RSS is its own. Without a file, one of the asked
size is made from the course corpus, repeated and varied: conversations whose answers are pretraining
documents with their sentences shuffled, in MiniMind's JSONL format.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


def make_file(out, kind: str, size_mb: float, corpus_dir, seed: int = 0) -> Path:
    """Write about size_mb MB of `kind` ("sft" or "pretrain") records made from the course corpus in corpus_dir
    (its pretrain.jsonl and sft.jsonl), streamed: memory stays flat at any size."""
    from ..data.records import iter_jsonl
    corpus_dir, out = Path(corpus_dir), Path(out)
    docs = [r["text"] for r in iter_jsonl(corpus_dir / "pretrain.jsonl", "pretrain")]
    questions = [r["conversations"][0]["content"] for r in iter_jsonl(corpus_dir / "sft.jsonl", "sft")]
    sentences = [[s.strip() + "." for s in d.split(".") if s.strip()] for d in docs]
    rng = random.Random(seed)
    target, written = int(size_mb * 1e6), 0
    with open(out, "w", encoding="utf-8") as fh:
        while written < target:
            doc = list(rng.choice(sentences))
            rng.shuffle(doc)  # a new document from an old one's sentences
            text = " ".join(doc[:rng.randint(4, 24)])
            if kind == "pretrain":
                record = {"text": text}
            else:
                record = {"conversations": [{"role": "user", "content": rng.choice(questions)},
                                            {"role": "assistant", "content": text}]}
            line = json.dumps(record, ensure_ascii=False) + "\n"
            fh.write(line)
            written += len(line.encode("utf-8"))
    return out


_DATASET = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from minimind.train.run import DATASETS, load_tokenizer
path, kind, tok_dir, seq_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = load_tokenizer(tok_dir)
t0 = time.perf_counter()
data = DATASETS[kind](path, tok, seq_len)
seconds = time.perf_counter() - t0
item = data[len(data) - 1]  # the last sample reads back
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "samples": len(data), "peak_rss_mb": peak}))
"""


def _child(args: list[str], env: dict) -> dict:
    """Run a child Python process (it measures its own peak RSS); its last JSON line of stdout."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"the measured process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def bench_file(path, kind: str, tokenizer, seq_len: int = 512, preset: str = "minimind2-small",
               batch_size: int = 4, step: bool = True) -> dict:
    """Tokenize `path` cold (empty cache) and warm (cached), then (step=True) run `minimind train` to step 1 of
    `preset` on it; each in its own process. Returns MB/s, records/s, seconds and peak RSS of each."""
    path = Path(path)
    size_mb = path.stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MINIMIND_CACHE": cache, "TOKENIZERS_PARALLELISM": "true"}
        args = ["-c", _DATASET, str(path), kind, str(tokenizer), str(seq_len)]
        cold = _child(args, env)
        warm = _child(args, env)
        result = {"file": str(path), "kind": kind, "size_mb": round(size_mb, 1), "samples": cold["samples"],
                  "tokenize_seconds": round(cold["seconds"], 2), "mb_per_s": round(size_mb / cold["seconds"], 2),
                  "samples_per_s": round(cold["samples"] / cold["seconds"]),
                  "tokenize_peak_rss_mb": round(cold["peak_rss_mb"]),
                  "cached_seconds": round(warm["seconds"], 2), "cached_peak_rss_mb": round(warm["peak_rss_mb"])}
        if step:
            stage = "pretrain" if kind == "pretrain" else "sft"
            with tempfile.TemporaryDirectory() as run:
                t0 = time.perf_counter()
                code = ("import json, resource, sys; from minimind.cli import main; rc = main(sys.argv[1:]); "
                        "print(json.dumps({'rc': rc, 'peak_rss_mb': "
                        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
                out = _child(["-c", code, "train", stage, "--preset", preset, "--data", str(path),
                                 "--tokenizer", str(tokenizer), "--seq-len", str(seq_len), "--batch-size",
                                 str(batch_size), "--max-steps", "1", "--device", "cpu", "--out", run], env)
                if out.get("rc"):
                    raise RuntimeError(f"minimind train {stage} failed with exit code {out['rc']}")
                result.update(step1_preset=preset, step1_seconds_cached=round(time.perf_counter() - t0, 1),
                              step1_peak_rss_mb=round(out["peak_rss_mb"]))
    return result


def bench_data(sizes_mb, kinds=("pretrain", "sft"), corpus_dir=None, tokenizer=None, work=None,
               seq_len: int = 512, preset: str = "minimind2-small", step: bool = True,
               files: Optional[list] = None) -> list[dict]:
    """bench_file on each given file, or on made files of each size and kind (kept in `work`)."""
    results = []
    if files:
        for f in files:
            from ..data.records import detect_kind
            first = json.loads(Path(f).open(encoding="utf-8").readline())
            kind = "pretrain" if detect_kind(first) == "pretrain" else "sft"
            results.append(bench_file(f, kind, tokenizer, seq_len, preset, step=step))
            print(format_row(results[-1]), flush=True)
        return results
    work = Path(work or tempfile.mkdtemp(prefix="minimind-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        for size in sizes_mb:
            f = work / f"{kind}_{size:g}mb.jsonl"
            if not f.exists() or f.stat().st_size < size * 1e6:
                make_file(f, kind, size, corpus_dir)
            results.append(bench_file(f, kind, tokenizer, seq_len, preset, step=step))
            print(format_row(results[-1]), flush=True)
    return results


def format_row(r: dict) -> str:
    line = (f"{r['kind']:8s} {r['size_mb']:8.1f} MB  {r['mb_per_s']:6.2f} MB/s  {r['samples_per_s']:8d} samples/s  "
            f"peak {r['tokenize_peak_rss_mb']:5d} MB  cached: {r['cached_seconds']:5.2f} s, "
            f"{r['cached_peak_rss_mb']:5d} MB")
    if "step1_peak_rss_mb" in r:
        line += f"  step 1 ({r['step1_preset']}): {r['step1_peak_rss_mb']} MB, {r['step1_seconds_cached']} s"
    return line


# book/performance.md holds the table of a committed result between these lines (`minimind data bench --page`)
PAGE_BEGIN = "<!-- begin: tables written by `minimind data bench` from {json} -->"
PAGE_END = "<!-- end: tables written by `minimind data bench` -->"


def format_markdown(results: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| data | file | tokenize | samples/s | peak RSS tokenizing | start when cached | step 1: RSS, time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        step = (f"{r['step1_peak_rss_mb']:,} MB, {r['step1_seconds_cached']} s ({r['step1_preset']})"
                if "step1_peak_rss_mb" in r else "-")
        lines.append(f"| {r['kind']} | {r['size_mb']:,.0f} MB | {r['mb_per_s']:.2f} MB/s | {r['samples_per_s']:,} | "
                     f"{r['tokenize_peak_rss_mb']:,} MB | {r['cached_seconds']:.2f} s | {step} |")
    return "\n".join(lines)


def write_page(page, results: list[dict], json_name: str) -> None:
    from .bench_report import update_page
    update_page(page, results, json_name, tables=format_markdown(results), begin=PAGE_BEGIN, end=PAGE_END)
