"""`minimind course`: execute every chapter notebook with papermill for one preset, gather the report
card, and build the book from the executed notebooks (they are not executed a second time)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..data.files import find_root
from .report import write_report_card
from .robustness import conditions


def chapter_notebooks(root: Path, only=None) -> list[Path]:
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in set(only)]
    return notebooks


def run_course(preset="tiny", out=None, data="course", device="auto", only=None, build_book=True,
               dtype="auto", seed: int = 0, keep_going: bool = False) -> Path:
    """keep_going: a chapter that fails (an assertion of its lesson, say) is written to run_dir/failed.json and the
    next chapter runs; without it the first failure stops the course."""
    import papermill

    root = find_root()
    if not (root / "notebooks").is_dir():
        raise FileNotFoundError(f"no notebooks/ folder above {Path.cwd()}: run this from the course folder")
    run_dir = Path(out or root / "runs" / preset).resolve()
    executed = run_dir / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    # what this run ran under: the seed every training chapter takes, the kernels, the CPU (--robustness reads it)
    (run_dir / "conditions.json").write_text(json.dumps({"seed": seed, **conditions()}, indent=1) + "\n")
    notebooks = chapter_notebooks(root, only)
    # failures of the chapters this call runs again are forgotten; those of the chapters it skips are kept
    failed_file = run_dir / "failed.json"
    failed = json.loads(failed_file.read_text()) if failed_file.exists() else {}
    failed = {chapter: why for chapter, why in failed.items() if chapter not in {nb.stem for nb in notebooks}}
    _write_failed(failed_file, failed)
    wall = {}
    for nb in notebooks:
        print(f"== {nb.name} ({preset})", flush=True)
        start = time.perf_counter()
        parameters = dict(preset=preset, data=data, device=device, out_dir=str(run_dir), dtype=dtype, seed=seed)
        declared = papermill.inspect_notebook(str(nb))  # chapters that train declare dtype and seed; others do not
        try:
            papermill.execute_notebook(
                str(nb), str(executed / nb.name), cwd=str(root), progress_bar=False,
                parameters={k: v for k, v in parameters.items() if k in declared})
        except papermill.PapermillExecutionError as error:
            if not keep_going:
                raise
            failed[nb.stem] = f"{error.ename}: {error.evalue}"
            _write_failed(failed_file, failed)
            print(f"   FAILED: {failed[nb.stem]}", flush=True)
        wall[nb.stem] = time.perf_counter() - start
        print(f"   {wall[nb.stem]:.1f} s", flush=True)
        walls = run_dir / "wall_times.json"  # every chapter's latest time, kept across --only runs
        walls.write_text(json.dumps({**(json.loads(walls.read_text()) if walls.exists() else {}), **wall},
                                    indent=1) + "\n")
    card = write_report_card(run_dir, wall, title=f"MiniMind report card: preset {preset}")
    print(f"report card: {card}")
    if build_book:
        print(f"book: {build_book_from(run_dir)}")
    return run_dir


def _write_failed(file: Path, failed: dict) -> None:
    if failed:
        file.write_text(json.dumps(failed, indent=1) + "\n")
    else:
        file.unlink(missing_ok=True)


def build_book_from(run_dir: Path) -> Path:
    """Stage the book's sources with the executed notebooks in place of the references, then build."""
    root = find_root()
    src = run_dir / "book_src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "book", src / "book")
    (src / "notebooks").mkdir()
    for nb in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        done = run_dir / "notebooks" / nb.name
        shutil.copy(done if done.exists() else nb, src / "notebooks" / nb.name)
    report = run_dir / "report.md"
    if report.exists():
        shutil.copy(report, src / "book" / "report.md")
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb) if jb.exists() else "jupyter-book", "build", str(src), "--path-output",
                    str(run_dir)], check=True)
    return run_dir / "_build" / "html" / "index.html"
