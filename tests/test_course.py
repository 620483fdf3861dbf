"""`minimind course` (what `make course` runs): papermill over the chapters, the report card, the book."""
import json
from pathlib import Path

import nbformat
import pytest

from minimind.course.report import record, write_report_card
from minimind.course.runner import run_course

ROOT = Path(__file__).resolve().parents[1]


def test_report_card_gathers_every_chapter(tmp_path):
    record(tmp_path, "07_pretrain", val_loss=0.8897, steps=300)
    record(tmp_path, "08_sft", heldout_exact_match=0.548)
    card = write_report_card(tmp_path, {"07_pretrain": 123.4}).read_text()
    assert "## 07_pretrain" in card and "| val_loss | 0.8897 |" in card and "| wall time (s) | 123.4 |" in card
    assert card.index("07_pretrain") < card.index("08_sft")
    assert "| heldout_exact_match | 0.548 |" in card


@pytest.mark.slow
def test_course_runs_a_chapter_with_papermill_and_builds_the_book(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_dir = run_course(preset="tiny", out=tmp_path / "run", only=["00"], build_book=True)
    executed = nbformat.read(run_dir / "notebooks" / "00_setup.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "out_dir" in injected[0].source  # papermill passed the run folder
    entry = json.loads((run_dir / "report" / "00_setup.json").read_text())
    assert entry["params"] > 0 and entry["train_tokens_per_s"] > 0
    assert "## 00_setup" in (run_dir / "report.md").read_text()
    html = run_dir / "_build" / "html"
    assert (html / "notebooks" / "00_setup.html").exists()
    assert "00_setup" in (html / "book" / "report.html").read_text()  # the report card is a page of the book


def test_dry_run_checks_every_stage_and_plans_the_gpu_run(capsys):
    from minimind.cli import main
    from minimind.course.plan import RECIPE, dry_run
    from minimind.train import STAGES
    plan = dry_run(preset="tiny", data="course", device="cpu")
    rows = {r["stage"]: r for r in plan["rows"]}
    assert set(rows) == {s.stage for s in RECIPE} and set(rows) <= set(STAGES)
    for r in rows.values():
        assert r["samples"] > 0 and r["tokens"] > 0 and r["steps"] >= 1 and r["step_seconds"] >= 0
        assert r["steps"] == -(-r["samples"] * r["epochs"] // r["batch_size"])
    assert rows["grpo"]["tokens"] > 5 * rows["ppo"]["tokens"]  # 6 rollouts a prompt
    assert 0.2 < plan["mfu"] < 0.7 and plan["total_hours"] == pytest.approx(sum(r["hours_3090"] for r in rows.values()))
    assert main(["course", "--dry-run", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "MFU" in out and "every stage stepped once" in out and "grpo" in out
