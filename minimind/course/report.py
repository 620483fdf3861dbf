"""The report card: each chapter records its measured results; `make course` gathers them in report.md."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.files import find_root


def runs_dir(preset: str = "tiny", out_dir: str | None = None) -> Path:
    """Where a chapter writes: out_dir if given, else runs/PRESET under the course folder."""
    path = Path(out_dir) if out_dir else find_root() / "runs" / preset
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(run_dir: str | Path, chapter: str, **metrics) -> dict:
    """Store a chapter's measured results (numbers or short strings) for the report card."""
    folder = Path(run_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"chapter": chapter, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **metrics}
    (folder / f"{chapter}.json").write_text(json.dumps(entry, indent=2, default=str) + "\n")
    return entry


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report_card(run_dir: str | Path, wall_times: dict[str, float] | None = None,
                      title: str | None = None) -> Path:
    """Render every recorded chapter into run_dir/report.md, one section a chapter."""
    run_dir = Path(run_dir)
    wall_times = wall_times or {}
    lines = [f"# {title or 'MiniMind report card'}", ""]
    entries = sorted((run_dir / "report").glob("*.json"))
    if wall_times:
        total = sum(wall_times.values())
        lines += [f"Total wall time: {total / 60:.1f} min", ""]
    for file in entries:
        entry = json.loads(file.read_text())
        chapter = entry.pop("chapter")
        entry.pop("time", None)
        lines += [f"## {chapter}", "", "| measure | value |", "| --- | --- |"]
        if chapter in wall_times:
            lines.append(f"| wall time (s) | {wall_times[chapter]:.1f} |")
        lines += [f"| {k} | {_fmt(v)} |" for k, v in entry.items()]
        lines.append("")
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


class MarkdownView:
    """Markdown that displays the same everywhere: text/markdown for JupyterLab, plus HTML with tables for the book
    (which reads outputs as CommonMark, without tables)."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        from markdown_it import MarkdownIt
        return MarkdownIt("commonmark").enable("table").render(self.text)

    def __repr__(self) -> str:
        return self.text


def report_table(run_dir: str | Path, exclude=()) -> str:
    """The recorded chapters as one compact Markdown table: a row a chapter, its measures in one cell
    (`name value · name value`), for showing the report card on one screen."""
    lines = ["| chapter | measured |", "| --- | --- |"]
    for file in sorted((Path(run_dir) / "report").glob("*.json")):
        entry = json.loads(file.read_text())
        chapter = entry.pop("chapter")
        entry.pop("time", None)
        if chapter in exclude:
            continue
        cells = " · ".join(f"{k} **{_fmt(v)}**" for k, v in entry.items()).replace("|", "\\|")
        lines.append(f"| {chapter} | {cells} |")
    return "\n".join(lines)
