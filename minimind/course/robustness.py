"""Do the chapters' lessons hold on any machine? `minimind course --robustness RUN...` reads finished course runs
(other seeds: `minimind course --seed S`; other CPUs' rounding: ATEN_CPU_CAPABILITY=avx2 and
MKL_ENABLE_INSTRUCTIONS=AVX2, which make torch and MKL take other kernels) and checks every lesson in each.

A lesson is a gain a chapter measures and teaches (pretraining beats the unigram guess, tool SFT beats no
tools, ...). It holds in a group of runs (one set of kernels) when every gain is positive and its mean gain is
larger than its spread (largest minus smallest) across the group's seeds. A chapter that repeats its run over
seeds of its own (11) judges its lesson inside each course run instead: every course run's gain must be larger
than the spread of that run's own seeds, whatever the start that course run handed it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .report import recorded

ROBUST_BEGIN = "<!-- begin: tables written by `minimind course --robustness` from {json} -->"
ROBUST_END = "<!-- end: tables written by `minimind course --robustness` -->"
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


@dataclass(frozen=True)
class Lesson:
    chapter: str
    claim: str
    unit: str                                          # "nats", "points" (accuracies, shown x100)
    gain: Callable[[dict], float]                      # from the chapter's record
    spread: Optional[Callable[[dict], float]] = None   # the chapter's own spread across its seeds, if it has one
    taught: bool = True                                # False: the chapter measures it and promises nothing
    within_run: bool = False                           # judged inside each course run, against its own seeds
    start: Optional[Callable[[dict], float]] = None    # where the chapter's model started (shown for per-run lessons)


def _rl(name: str) -> Lesson:
    return Lesson("11_rl", f"{name.upper()} raises held-out accuracy over SFT", "points",
                  lambda r: r[f"{name}_heldout_accuracy"] - r["sft_heldout_accuracy"],
                  lambda r: r[f"{name}_heldout_accuracy_spread"], within_run=True,
                  start=lambda r: r["sft_heldout_accuracy"])


LESSONS = [
    Lesson("07_pretrain", "pretraining beats the unigram guess (validation loss)", "nats",
           lambda r: r["unigram_loss"] - r["val_loss"]),
    Lesson("08_sft", "SFT answers held-out facts the base model cannot (exact match)", "points",
           lambda r: r["heldout_exact_match"] - r["base_heldout_exact_match"]),
    Lesson("09_lora", "LoRA teaches the new skill", "points", lambda r: r["skill_after"] - r["skill_before"]),
    Lesson("10_dpo", "DPO's implicit reward ranks the chosen answer first on held-out pairs, above chance (50%)",
           "points", lambda r: r["heldout_pref_accuracy"] - 0.5),
    _rl("ppo"), _rl("grpo"), _rl("spo"),
    Lesson("12_distill", "the student learns more with the teacher's distributions (validation loss)", "nats",
           lambda r: r["student_val_loss"] - r["student_kd_val_loss"]),
    Lesson("12_distill", "traces beat direct answers on held-out multi-step problems", "points",
           lambda r: r["multistep_accuracy_traces"] - r["multistep_accuracy_direct"], taught=False),
    Lesson("14_tools", "tool SFT beats SFT without tools on held-out tool tasks", "points",
           lambda r: r["tool_sft"] - r["no_tools"], lambda r: r["tool_sft_spread"]),
    Lesson("14_tools", "agentic RL raises success on prompts in new words", "points",
           lambda r: r["agent_after"] - r["agent_before"], lambda r: r["agent_after_spread"], taught=False,
           within_run=True),
]


def conditions() -> dict:
    """What a course run ran under: the kernels asked for, the CPU, torch (written into the run folder)."""
    import torch

    from ..use.bench_timing import cpu_name
    kernels = {k: os.environ[k] for k in KERNEL_VARIABLES if os.environ.get(k)}
    return {"kernels": ", ".join(f"{k}={v}" for k, v in kernels.items()) or "native",
            "cpu": cpu_name(), "torch": torch.__version__}


def _run_info(run_dir: Path) -> dict:
    file = run_dir / "conditions.json"
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: {run_dir} was not written by `minimind course` (run it with "
                                f"`minimind course --seed S --out {run_dir}`)")
    return json.loads(file.read_text())


def _lesson_rows(run: Path) -> list[dict]:
    """One row per lesson the run recorded (or whose chapter failed): its gain and its own seeds' spread."""
    info, card = _run_info(run), recorded(run)
    failed = json.loads((run / "failed.json").read_text()) if (run / "failed.json").exists() else {}
    rows = []
    for lesson in LESSONS:
        record, stopped = card.get(lesson.chapter), failed.get(lesson.chapter)
        if record is None and not stopped:
            continue
        row = {"run": str(run), "seed": info.get("seed"), "kernels": info["kernels"], "cpu": info["cpu"],
               "lesson": lesson, "gain": None, "own_spread": None, "start": None, "failed": stopped}
        # a chapter that recorded its numbers before its check stopped it is judged lesson by lesson on them;
        # one stopped before recording has no gain, and its lessons do not hold
        try:
            if record is not None:
                row["gain"] = float(lesson.gain(record))
                row["own_spread"] = float(lesson.spread(record)) if lesson.spread else None
                row["start"] = float(lesson.start(record)) if lesson.start else None
        except KeyError as missing:
            if not stopped:
                raise KeyError(f"{run}: the {lesson.chapter} record has no {missing}; re-run that chapter") from None
        rows.append(row)
    return rows


def _holds(lesson: Lesson, rows: list[dict], mean: float, spread: float) -> bool:
    gains = [r["gain"] for r in rows]
    if not gains or None in gains or min(gains) <= 0:
        return False
    own_ok = all(r["gain"] > r["own_spread"] for r in rows if r["own_spread"] is not None)
    return own_ok if lesson.within_run else own_ok and mean > spread


def robustness(runs) -> dict:
    """Every lesson in every run, grouped by kernels: per run its gain (and its own seeds' spread), per group
    the mean, the spread across runs, and whether the lesson holds."""
    rows = [row for run in map(Path, runs) for row in _lesson_rows(run)]
    if not rows:
        raise ValueError("no lesson recorded in these runs: run the chapters first (`minimind course --seed S`)")
    groups = []
    for lesson in LESSONS:
        for kernels in sorted({r["kernels"] for r in rows}):
            mine = [r for r in rows if r["lesson"] is lesson and r["kernels"] == kernels]
            if not mine:
                continue
            gains = [r["gain"] for r in mine if r["gain"] is not None]
            mean = sum(gains) / len(gains) if gains else float("nan")
            spread = max(gains) - min(gains) if gains else float("nan")
            groups.append({"chapter": lesson.chapter, "claim": lesson.claim, "unit": lesson.unit,
                           "taught": lesson.taught, "within_run": lesson.within_run,
                           "kernels": kernels, "seeds": [r["seed"] for r in mine],
                           "gains": [r["gain"] for r in mine], "mean": mean, "spread": spread,
                           "own_spreads": [r["own_spread"] for r in mine],
                           "starts": [r["start"] for r in mine],
                           "failed": [r["failed"] for r in mine if r["failed"]],
                           "holds": _holds(lesson, mine, mean, spread)})
    return {"runs": [str(r) for r in runs], "cpus": sorted({r["cpu"] for r in rows}), "groups": groups,
            "all_hold": all(g["holds"] for g in groups if g["taught"])}


def _value(x: float, unit: str) -> str:
    if x != x:  # no gain measured (every run of the group failed)
        return "-"
    return f"{100 * x:+.1f}" if unit == "points" else f"{x:+.3f}"


def format_robustness(result: dict) -> str:
    taught = [g for g in result["groups"] if g["taught"]]
    lines = [f"CPU: {', '.join(result['cpus'])}. {sum(g['holds'] for g in taught)} of {len(taught)} lessons hold "
             "(every gain positive and the mean gain above the spread across seeds; for the lessons marked "
             "*per run*, each course run's gain above the spread of the chapter's own seeds instead, since each "
             "course run hands the chapter another start). Rows marked *measured* are comparisons a chapter "
             "shows without promising an outcome.", "",
             "| chapter | lesson [unit] | kernels | seeds | gain per seed | mean | spread | holds |",
             "| --- | --- | --- | --- | --- | ---: | ---: | --- |"]
    for g in result["groups"]:
        unit = "points" if g["unit"] == "points" else "nats"
        per_seed = " / ".join("failed" if x is None else _value(x, g["unit"]) for x in g["gains"])
        if any(s is not None for s in g["own_spreads"]):
            per_seed += " (own spreads " + " / ".join("-" if s is None else _value(s, g["unit"]).lstrip("+")
                                                      for s in g["own_spreads"]) + ")"
        if any(s is not None for s in g.get("starts", [])):
            per_seed += "; from " + " / ".join("-" if s is None else _value(s, g["unit"]).lstrip("+")
                                               for s in g["starts"])
        claim = g["claim"] if g["taught"] else f"*measured*: {g['claim']}"
        claim += " (*per run*)" if g.get("within_run") else ""
        kernels = g["kernels"].replace("ATEN_CPU_CAPABILITY=", "ATen ").replace("MKL_ENABLE_INSTRUCTIONS=", "MKL ")
        lines.append(f"| {g['chapter']} | {claim} [{unit}] | {kernels} | "
                     f"{', '.join(str(s) for s in g['seeds'])} | {per_seed} | {_value(g['mean'], g['unit'])} | "
                     f"{_value(g['spread'], g['unit']).lstrip('+')} | {'yes' if g['holds'] else '**no**'} |")
    failures = [(g["chapter"], f) for g in result["groups"] for f in g.get("failed", [])]
    if failures:
        lines += ["", "Chapters that stopped on an error (one that recorded its numbers first is judged lesson by "
                  "lesson on them; one that did not counts as not holding):"]
        lines += [f"- {chapter}: {message}" for chapter, message in dict.fromkeys(failures)]
    return "\n".join(lines)
