"""The report card: each chapter records its measured results; `make course` gathers them in report.md."""
from __future__ import annotations

import json
import re
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


def recorded(run_dir: str | Path) -> dict[str, dict]:
    """{chapter: {measure: value}} as the chapters recorded them in run_dir/report, in chapter order."""
    card = {}
    for file in sorted((Path(run_dir) / "report").glob("*.json")):
        entry = json.loads(file.read_text())
        chapter = entry.pop("chapter")
        entry.pop("time", None)
        card[chapter] = entry
    return card


def write_report_card(run_dir: str | Path, wall_times: dict[str, float] | None = None,
                      title: str | None = None) -> Path:
    """Render every recorded chapter into run_dir/report.md, one section a chapter."""
    run_dir = Path(run_dir)
    wall_times = wall_times or {}
    lines = [f"# {title or 'MiniMind report card'}", ""]
    if wall_times:
        total = sum(wall_times.values())
        lines += [f"Total wall time: {total / 60:.1f} min", ""]
    for chapter, entry in recorded(run_dir).items():
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
    for chapter, entry in recorded(run_dir).items():
        if chapter in exclude:
            continue
        cells = " · ".join(f"{k} **{_fmt(v)}**" for k, v in entry.items()).replace("|", "\\|")
        lines.append(f"| {chapter} | {cells} |")
    return "\n".join(lines)


# -- two runs of the course side by side (e.g. float32 against bf16 autocast) ------------------------------------
# measures that time the machine, not the lesson: compared as speed, never against the tolerance
TIMING_WORDS = ("seconds", "tokens_per_s", "latency", "_ms", "speedup")
COMPARE_BEGIN = "<!-- begin: tables written by `minimind course --compare` from {json} -->"
COMPARE_END = "<!-- end: tables written by `minimind course --compare` -->"


def read_card(run_dir: str | Path) -> dict:
    """{chapter: {measure: value}} of a run's report card, plus "wall time (s)" where the course recorded it."""
    run_dir = Path(run_dir)
    folder = run_dir / "report"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run `minimind course --out {run_dir}` first")
    card = recorded(run_dir)
    wall = run_dir / "wall_times.json"
    for chapter, seconds in (json.loads(wall.read_text()) if wall.exists() else {}).items():
        card.setdefault(chapter, {})["wall time (s)"] = seconds
    return card


def compare_cards(reference: str | Path, other: str | Path, rel_tol: float = 0.1, abs_tol: float = 0.05,
                  names=("float32", "bf16")) -> dict:
    """Every numeric measure of two report cards: a lesson measure agrees when it differs by at most abs_tol
    (accuracies: 5 points) or rel_tol of the reference (losses, perplexities); timings are compared as speed."""
    a, b = read_card(reference), read_card(other)
    rows, timing = [], []
    for chapter in sorted(set(a) & set(b)):
        for measure, x in a[chapter].items():
            y = b[chapter].get(measure)
            if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) \
                    or not isinstance(y, (int, float)):
                if y is not None and x != y:
                    rows.append({"chapter": chapter, "measure": measure, "reference": x, "other": y,
                                 "within": False})
                continue
            if measure == "wall time (s)" or any(w in measure for w in TIMING_WORDS):
                timing.append({"chapter": chapter, "measure": measure, "reference": x, "other": y})
                continue
            diff = y - x
            rows.append({"chapter": chapter, "measure": measure, "reference": x, "other": y, "difference": diff,
                         "within": abs(diff) <= abs_tol or abs(diff) <= rel_tol * abs(x)})
    walls = [r for r in timing if r["measure"] == "wall time (s)"]
    return {"names": list(names), "rel_tol": rel_tol, "abs_tol": abs_tol, "rows": rows, "timing": timing,
            "wall_total": [sum(r["reference"] for r in walls), sum(r["other"] for r in walls)] if walls else None}


def _time(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


TIMES_BEGIN = "<!-- begin: tables written by `minimind course --times` from {json} -->"
TIMES_END = "<!-- end: tables written by `minimind course --times` -->"


def course_times(run_dir: str | Path, goal_minutes: float = 10.0, chapter_goal_minutes: float = 4.0) -> dict:
    """Each chapter's wall time in a finished course run, the training seconds its card records, each chapter
    against chapter_goal_minutes and the whole course against goal_minutes."""
    card = read_card(run_dir)
    chapters = []
    for chapter in sorted(card):
        measures = card[chapter]
        if "wall time (s)" not in measures:
            continue
        train = sum(v for k, v in measures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k.endswith("train_seconds"))
        chapters.append({"chapter": chapter, "wall_s": measures["wall time (s)"], "train_s": train})
    if not chapters:
        raise ValueError(f"{run_dir} has no wall_times.json: time a course with `minimind course --out {run_dir}`")
    total = sum(c["wall_s"] for c in chapters)
    over = [c["chapter"] for c in chapters if c["wall_s"] > chapter_goal_minutes * 60]
    return {"run": Path(run_dir).name, "chapters": chapters, "total_s": total, "goal_minutes": goal_minutes,
            "chapter_goal_minutes": chapter_goal_minutes, "chapters_over": over,
            "met": total <= goal_minutes * 60 and not over}


def format_course_times(result: dict) -> str:
    total = result["total_s"]
    lines = ["| chapter | wall time (s) | training (s) | share of the course |", "| --- | ---: | ---: | ---: |"]
    for c in result["chapters"]:
        train = _time(c["train_s"]) if c["train_s"] else "-"
        lines.append(f"| {c['chapter']} | {_time(c['wall_s'])} | {train} | {c['wall_s'] / total:.0%} |")
    verdict = "met" if result["met"] else "**not met**"
    whole = total <= result["goal_minutes"] * 60
    lines += ["", f"The whole course: {total / 60:.1f} min (goal: at most {result['goal_minutes']:g} min): "
                  f"{'met' if whole else '**not met**'}."]
    if "chapter_goal_minutes" in result:
        over = result["chapters_over"]
        lines += [f"Every chapter at most {result['chapter_goal_minutes']:g} min: "
                  + ("met." if not over else f"**not met** ({', '.join(over)}).")]
    lines += [f"Both goals: {verdict}."]
    return "\n".join(lines)


def format_comparison(result: dict) -> str:
    ref, other = result["names"]
    rows = result["rows"]
    outside = [r for r in rows if not r["within"]]
    lines = [f"{len(rows) - len(outside)} of {len(rows)} lesson measures agree (within {result['abs_tol']:g} "
             f"or {result['rel_tol']:.0%} of the {ref} value); {len(outside)} differ by more.", ""]
    if result["wall_total"]:
        a, b = result["wall_total"]
        lines += [f"The whole course: {a / 60:.1f} min in {ref}, {b / 60:.1f} min in {other} ({a / b:.2f}x).", ""]
    lines += [f"| chapter | measure | {ref} | {other} | agrees |", "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['chapter']} | {r['measure']} | {_fmt(r['reference'])} | {_fmt(r['other'])} | "
                     f"{'yes' if r['within'] else '**no**'} |")
    timing = [r for r in result["timing"] if r["reference"] and r["other"]]
    if timing:
        lines += ["", f"| chapter | time or speed | {ref} | {other} | {other} faster by |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for r in timing:  # seconds: fewer is faster; a rate (tokens/s, a speedup): more is
            a, b = r["reference"], r["other"]
            faster = b / a if any(w in r["measure"] for w in ("per_s", "speedup")) else a / b
            lines.append(f"| {r['chapter']} | {r['measure']} | {_time(a)} | {_time(b)} | {faster:.2f}x |")
    return "\n".join(lines)


# -- the book's report card: what the committed notebooks recorded ------------------------------------------
def _cells(notebook: str | Path | list) -> list:
    """An executed notebook's cells: read from its file, or given already read."""
    return notebook if isinstance(notebook, list) else json.loads(Path(notebook).read_text())["cells"]


def notebook_record(notebook: str | Path | list) -> tuple[str, dict] | None:
    """(chapter, its record) as an executed notebook printed it (the output of its `record(run_dir, ...)` cell),
    the time left out; None when it has none."""
    import ast
    found = None
    for cell in _cells(notebook):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "code" or "record(run_dir" not in source:
            continue
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/plain")
            text = "".join(text) if isinstance(text, list) else text
            text = re.sub(r"np\.(?:float|int|bool_)\w*\(([^()]*)\)", r"\1", text or "")  # numpy 2's repr
            try:
                entry = ast.literal_eval(text) if text else None
            except (ValueError, SyntaxError):
                continue
            if isinstance(entry, dict) and "chapter" in entry:
                entry.pop("time", None)
                found = entry.pop("chapter"), entry
    return found


def notebook_seconds(notebook: str | Path | list) -> float | None:
    """Seconds an executed notebook's code cells ran, from the timings nbclient writes into each cell's metadata
    (None when it has none)."""
    from datetime import datetime

    def at(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    total, found = 0.0, False
    for cell in _cells(notebook):
        timing = cell.get("metadata", {}).get("execution", {})
        if cell["cell_type"] == "code" and "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            total += (at(timing["shell.execute_reply"]) - at(timing["iopub.execute_input"])).total_seconds()
            found = True
    return total if found else None


REPORT_PAGE_INTRO = """# Report card

The report card of the run this book shows: what each chapter measured (`record(...)`, the chapter's last
cell) when `make refresh` executed the committed notebooks, in course order, and how long each chapter's
cells ran. `make course` writes your own run's card into `runs/tiny/report.md` and puts it
here in the book it builds. Written by `minimind course --report-page book/report.md` from the notebooks; a
test checks that it matches them.
"""


def book_report(notebooks_dir: str | Path | None = None) -> str:
    """The book's report-card page from the executed notebooks in notebooks_dir (default: the course's)."""
    folder = Path(notebooks_dir) if notebooks_dir else find_root() / "notebooks"
    lines, times = [REPORT_PAGE_INTRO], []
    sections = []
    for notebook in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        cells = _cells(notebook)  # read once for both
        found, seconds = notebook_record(cells), notebook_seconds(cells)
        times.append((notebook.stem, seconds))
        if found:
            chapter, entry = found
            sections += [f"## {chapter}", "", "| measure | value |", "| --- | --- |"]
            sections += [f"| {k} | {_fmt(v).replace('|', '/')} |" for k, v in entry.items()] + [""]
    known = [s for _, s in times if s is not None]
    lines += ["## Time", "", "| chapter | seconds its cells ran |", "| --- | ---: |"]
    lines += [f"| {name} | {'' if s is None else f'{s:.0f}'} |" for name, s in times]
    lines += [f"| all | {sum(known):.0f} ({sum(known) / 60:.1f} min) |", ""]
    return "\n".join(lines + sections)
