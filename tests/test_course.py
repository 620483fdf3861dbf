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


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_keep_going_records_failures_and_a_partial_rerun_keeps_the_others(tmp_path, monkeypatch):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "notebooks" / "01_fine.ipynb", "print('fine')")
    _notebook(tmp_path / "notebooks" / "02_broken.ipynb", "assert 1 > 2, 'no gain'")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run_course(out=run, build_book=False, keep_going=True)  # the course goes on past the failure
    assert (run / "notebooks" / "01_fine.ipynb").exists()
    assert json.loads((run / "failed.json").read_text()) == {"02_broken": "AssertionError: no gain"}
    run_course(out=run, only=["01"], build_book=False, keep_going=True)  # 02 not re-run: its failure stays
    assert list(json.loads((run / "failed.json").read_text())) == ["02_broken"]
    _notebook(tmp_path / "notebooks" / "02_broken.ipynb", "print('mended')")
    run_course(out=run, only=["02"], build_book=False, keep_going=True)
    assert not (run / "failed.json").exists()
    with pytest.raises(Exception, match="no gain"):  # without keep_going the first failure stops the course
        _notebook(tmp_path / "notebooks" / "02_broken.ipynb", "assert 1 > 2, 'no gain'")
        run_course(out=run, build_book=False)


def test_dry_run_checks_every_stage_and_plans_the_gpu_run(capsys, monkeypatch):
    from minimind.cli import main
    from minimind.course import plan as plan_module
    from minimind.course.plan import RECIPE
    from minimind.train import STAGES
    plans = []  # the command line's own plan (one dry run, not two)
    real = plan_module.dry_run
    monkeypatch.setattr(plan_module, "dry_run", lambda **kw: plans.append(real(**kw)) or plans[-1])
    assert main(["course", "--dry-run", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "MFU" in out and "every stage stepped once" in out and "grpo" in out
    plan = plans[0]
    rows = {r["stage"]: r for r in plan["rows"]}
    assert set(rows) == {s.stage for s in RECIPE} and set(rows) <= set(STAGES)
    for r in rows.values():
        assert r["samples"] > 0 and r["tokens"] > 0 and r["steps"] >= 1 and r["step_seconds"] >= 0
        assert r["steps"] == -(-r["samples"] * r["epochs"] // r["batch_size"])
    assert rows["grpo"]["tokens"] > 5 * rows["ppo"]["tokens"]  # 6 rollouts a prompt
    assert 0.2 < plan["mfu"] < 0.7 and plan["total_hours"] == pytest.approx(sum(r["hours_3090"] for r in rows.values()))


# -- two runs compared (float32 against bf16) --------------------------------------------------------------------
def _fake_run(folder, cards, walls=None):
    from minimind.course.report import record
    for chapter, measures in cards.items():
        record(folder, chapter, **measures)
    if walls:
        (folder / "wall_times.json").write_text(json.dumps(walls))
    return folder


def test_compare_cards_checks_lessons_against_the_tolerance_and_times_apart(tmp_path):
    from minimind.course.report import compare_cards, format_comparison
    fp32 = _fake_run(tmp_path / "fp32", {"08_sft": dict(em_heldout=0.40, val_loss=2.0, device="cpu",
                                                        train_seconds=60.0),
                                         "11_rl": dict(grpo_gain=0.10, same=True)}, {"08_sft": 90.0, "11_rl": 200.0})
    bf16 = _fake_run(tmp_path / "bf16", {"08_sft": dict(em_heldout=0.44, val_loss=2.3, device="cpu",
                                                        train_seconds=30.0),
                                         "11_rl": dict(grpo_gain=0.02, same=False)}, {"08_sft": 45.0, "11_rl": 100.0})
    result = compare_cards(fp32, bf16, rel_tol=0.1, abs_tol=0.05)
    verdicts = {r["measure"]: r["within"] for r in result["rows"]}
    # 4 points of accuracy: within 0.05; a loss 15% higher: outside 10%; 8 points of gain: outside; a flag flipped
    assert verdicts == {"em_heldout": True, "val_loss": False, "grpo_gain": False, "same": False}
    assert {r["measure"] for r in result["timing"]} == {"train_seconds", "wall time (s)"}
    assert result["wall_total"] == [290.0, 145.0]
    text = format_comparison(result)
    assert "1 of 4 lesson measures agree" in text and "(2.00x)" in text
    assert "| 08_sft | val_loss | 2 | 2.3 | **no** |" in text


def test_course_times_list_every_chapter_and_judge_the_whole(tmp_path, capsys):
    from minimind.cli import main
    from minimind.course.report import TIMES_BEGIN, TIMES_END, course_times, format_course_times
    run = _fake_run(tmp_path / "tiny", {"07_pretrain": dict(train_seconds=150.0, val_loss=0.9),
                                        "11_rl": dict(ppo_train_seconds=15.0, grpo_train_seconds=10.0, seeds=3),
                                        "14_tools": dict(vocab=1536)}, {"07_pretrain": 170.0, "11_rl": 130.0})
    result = course_times(run, goal_minutes=5)
    assert [c["chapter"] for c in result["chapters"]] == ["07_pretrain", "11_rl"]  # 14 has no wall time
    assert result["chapters"][1]["train_s"] == 25.0 and result["total_s"] == 300.0 and result["met"]
    assert not course_times(run, goal_minutes=4.9)["met"]
    slow = course_times(run, goal_minutes=5, chapter_goal_minutes=2.5)  # chapter 07 takes 170 s
    assert not slow["met"] and slow["chapters_over"] == ["07_pretrain"]
    assert "**not met** (07_pretrain)" in format_course_times(slow)
    text = format_course_times(result)
    assert "| 07_pretrain | 170 | 150 | 57% |" in text and "5.0 min (goal: at most 5 min): met." in text
    assert "Every chapter at most 4 min: met." in text
    page = tmp_path / "page.md"
    page.write_text(f"{TIMES_BEGIN.format(json=tmp_path / 't.json')}\n{TIMES_END}\n")
    assert main(["course", "--times", str(run), "--json", str(tmp_path / "t.json"), "--page", str(page)]) == 0
    assert format_course_times(course_times(run)) in page.read_text()  # the command's goals: 10 and 4 minutes
    assert json.loads((tmp_path / "t.json").read_text())["total_s"] == 300.0
    capsys.readouterr()
    assert main(["course", "--times", str(_fake_run(tmp_path / "untimed", {"08_sft": dict(em=0.5)}))]) != 0
    assert "has no wall_times.json" in capsys.readouterr().err


def test_compare_cli_writes_the_page_block(tmp_path, capsys):
    from minimind.cli import main
    from minimind.course.report import COMPARE_BEGIN, COMPARE_END
    a = _fake_run(tmp_path / "float32", {"08_sft": dict(em=0.5)})
    b = _fake_run(tmp_path / "bf16", {"08_sft": dict(em=0.5)})
    page = tmp_path / "page.md"
    page.write_text(f"# P\n\n{COMPARE_BEGIN.format(json=tmp_path / 'cmp.json')}\n{COMPARE_END}\n\ntail\n")
    assert main(["course", "--compare", str(a), str(b), "--json", str(tmp_path / "cmp.json"),
                 "--page", str(page)]) == 0
    text = page.read_text()
    assert "| 08_sft | em | 0.5 | 0.5 | yes |" in text and text.endswith("tail\n")
    assert json.loads((tmp_path / "cmp.json").read_text())["names"] == ["float32", "bf16"]
    capsys.readouterr()
    assert main(["course", "--compare", str(a), str(tmp_path / "missing")]) != 0
    assert "missing/report does not exist: run `minimind course --out" in capsys.readouterr().err

