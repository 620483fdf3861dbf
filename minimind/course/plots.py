"""Figures the chapters share: training curves from metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..train.loop import read_metrics


def plot_metrics(runs: dict, keys=("loss", "val_loss"), ax=None, baseline: dict | None = None, title=None,
                 logy: bool = False):
    """One line per (run, key); runs: {label: run folder or metric records}; baseline: {label: value}, dashed."""
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


def plot_checkpoints(rows: list[dict], panels=(("perplexity", "perplexity on held-out text (lower is better)"),
                                                ("mc_accuracy", "multiple-choice accuracy"),
                                                ("exact_match", "exact-match accuracy")), title=None):
    """Bar charts of evaluate_checkpoints' rows, one panel per metric, one bar per stage; multiple-choice
    accuracy gets its chance level as a dashed line. Returns the figure."""
    panels = [(k, label) for k, label in panels if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    stages = [r["stage"] for r in rows]
    for ax, (key, label) in zip(axes[0], panels):
        values = [r.get(key) or 0.0 for r in rows]
        bars = ax.bar(stages, values, color=[f"C{i}" for i in range(len(rows))])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        if key == "mc_accuracy" and rows[0].get("mc_chance") is not None:
            ax.axhline(rows[0]["mc_chance"], ls="--", color="grey", lw=1, label="chance")
            ax.legend(fontsize=7, loc="lower right")
        if "accuracy" in key or key == "exact_match":
            ax.set_ylim(0, 1.05)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45 if len(rows) > 4 else 0, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def running_mean(values, window: int = 1) -> list[float]:
    """The mean of each value and the window - 1 before it (fewer at the start): a trailing smoother that
    never looks ahead, for noisy per-step curves such as RL rewards."""
    values, out, total = list(values), [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs_side_by_side(runs: dict, panels=(("reward_mean", "reward"), ("kl", "KL to the reference")),
                           smooth: int = 1, title=None):
    """One panel per (metric key, label), one line per run (runs: {label: run folder or metric records}); smooth > 1
    draws the raw values faintly under a trailing running mean. Returns the figure."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.3), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for i, (name, run) in enumerate(runs.items()):
            records = read_metrics(run) if isinstance(run, (str, Path)) else run
            points = [(r["step"], r[key]) for r in records if key in r]
            if not points:
                continue
            steps, values = zip(*points)
            if smooth > 1:
                ax.plot(steps, values, color=f"C{i}", alpha=0.25, lw=1)
            ax.plot(steps, running_mean(values, smooth), color=f"C{i}", label=name)
        ax.set(xlabel="step", title=label + (f" (running mean of {smooth})" if smooth > 1 else ""))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_length_curve(curve: dict, title=None):
    """Perplexity against length, RoPE and YaRN (eval.yarn_length_curve's result): whole windows (left), their last
    quarter (right), the trained length dashed. Returns the figure."""
    lengths, trained = curve["lengths"], curve["original_max_position_embeddings"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, suffix, label in zip(axes, ("", "_tail"), ("whole window", "last quarter of the window")):
        ax.plot(lengths, curve["rope" + suffix], "o-", label="RoPE")
        ax.plot(lengths, curve["yarn" + suffix], "s-", label=f"YaRN x{curve['factor']:g}")
        ax.axvline(trained, ls="--", color="grey", lw=1, label="trained length")
        ax.set(xscale="log", xlabel="sequence length (tokens)", ylabel="perplexity", title=label)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
