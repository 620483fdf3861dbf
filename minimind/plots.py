"""Figures the chapters share: training curves from metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from .train import read_metrics


def plot_metrics(runs: dict, keys=("loss", "val_loss"), ax=None, baseline: dict | None = None, title=None,
                 logy: bool = False):
    """One line per (run, key). runs: {label: run folder or list of metric records}.

    baseline: {label: value} drawn as horizontal dashed lines (e.g. the unigram loss).
    """
    ax = ax or plt.subplots(figsize=(7, 3.8))[1]
    for label, run in runs.items():
        records = read_metrics(run) if isinstance(run, (str, Path)) else run
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points)
                style = "o-" if key.startswith("val") else "-"
                ax.plot(steps, values, style, ms=3, label=f"{label} {key}" if len(runs) > 1 else key)
    for label, value in (baseline or {}).items():
        ax.axhline(value, ls="--", color="grey", lw=1)
        ax.annotate(label, (0, value), xycoords=("axes fraction", "data"), xytext=(4, 3),
                    textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel(", ".join(keys) if len(keys) < 3 else "value")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
