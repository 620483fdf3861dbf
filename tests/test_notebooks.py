"""The notebooks stay honest: paired, listed in the book, holding checked reference outputs that bite.

(nbval itself executes every notebooks/*.ipynb as part of `make test`; see pyproject's addopts.)
"""
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make sync` (jupytext --sync) and `make refresh`"
    assert _cells(jupytext.read(py)) == _cells(nbformat.read(ipynb, as_version=4)), (
        f"{py.name} and {ipynb.name} differ: run `make sync`, then `make refresh` to re-execute")


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_conventions(py):
    text = py.read_text()
    assert 'tags=["parameters"]' in text, "papermill needs a cell tagged parameters"
    assert "import minimind" in text or "from minimind" in text
    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    checked = [c for c in nb.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert checked, "no cell marked # NBVAL_CHECK_OUTPUT: nbval would compare nothing"
    for cell in checked:  # nbval skips cells without an execution count: the reference must be executed
        assert cell.execution_count is not None and cell.outputs, (
            f"{py.stem}: a checked cell has no executed output; run `make refresh`")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not any(o.get("output_type") == "error" for o in cell.outputs), f"{py.stem} holds an error"


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def test_every_notebook_is_in_the_book_and_every_page_exists():
    files = _toc_files()
    for py in NOTEBOOKS:
        assert f"notebooks/{py.stem}" in files, f"add notebooks/{py.stem} to _toc.yml"
    for f in files:
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml lists missing {f}"


def _run_nbval(notebook: Path, cwd: Path):
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider",
                           "-o", "addopts=", "-q", str(notebook)], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_nbval_comparison_bites(tmp_path):
    """A reference with one checked output changed must fail nbval (as the chapters run it: --nbval-lax, the
    cell marked NBVAL_CHECK_OUTPUT); the untouched copy passes. A two-cell notebook: the mechanism, in seconds."""
    def notebook(printed):
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
        checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(f'{25.8:.1f}M parameters')",
                                            execution_count=1)
        checked.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{printed}M parameters\n")]
        free = nbformat.v4.new_code_cell("import time\nprint(time.time())", execution_count=2)
        free.outputs = [nbformat.v4.new_output("stream", name="stdout", text="0\n")]  # unchecked: may differ
        nb.cells = [checked, free]
        return nb
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    nbformat.write(notebook("25.8"), good)
    nbformat.write(notebook("25.9"), bad)
    assert _run_nbval(good, tmp_path).returncode == 0
    result = _run_nbval(bad, tmp_path)
    assert result.returncode != 0 and "25.9M" in result.stdout


def test_the_report_card_in_chapter_13_is_the_committed_chapters_records():
    """Chapter 13's report card shows what chapters 00-12 recorded in the same run: a chapter re-executed after
    it (or out of course order) leaves it stale. Fix: `make refresh` (every chapter, in order)."""
    import re

    from minimind.course.report import _fmt, notebook_record
    nb = nbformat.read(ROOT / "notebooks" / "13_eval_serve.ipynb", as_version=4)
    table = next(out.get("data", {}).get("text/markdown", "") for cell in nb.cells if cell.cell_type == "code"
                 and "report_table" in cell.source for out in cell.outputs if "text/markdown" in out.get("data", {}))
    rows = dict(re.findall(r"^\| (\d\d_\w+) \| (.*) \|$", table, flags=re.M))
    stale = []
    for notebook in sorted((ROOT / "notebooks").glob("[0-1][0-9]_*.ipynb")):
        found = notebook_record(notebook)
        if found is None or found[0] >= "13":
            continue
        chapter, entry = found
        shown = " · ".join(f"{k} **{_fmt(v)}**" for k, v in entry.items()).replace("|", "\\|")
        if rows.get(chapter) != shown:
            stale.append(f"{chapter}: chapter 13 shows {rows.get(chapter)!r}, the chapter recorded {shown!r}")
    assert not stale, "chapter 13's report card is stale (run `make refresh`):\n" + "\n".join(stale)


def test_the_books_report_card_is_the_committed_notebooks():
    """book/report.md is written from the committed notebooks' records and timings (`make refresh` writes it)."""
    from minimind.course.report import book_report
    page = (ROOT / "book" / "report.md").read_text()
    assert page == book_report(ROOT / "notebooks"), "book/report.md is stale: run `make refresh` (or " \
        "`minimind course --report-page book/report.md`)"
    assert "| 07_pretrain |" in page and "## 14_tools" in page
