"""The book builds without warnings and every chapter page carries its figures."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_builds_with_every_chapter_and_figure(tmp_path):
    jb = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(tmp_path), "--warningiserror",
                             "--keep-going"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        page = html / "notebooks" / f"{nb_path.stem}.html"
        assert page.exists(), f"{page.name} was not rendered"
        nb = nbformat.read(nb_path, as_version=4)
        figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if "image/png" in o.get("data", {}))
        assert page.read_text().count("<img") >= figures, f"{page.name} lacks some of its {figures} figures"
