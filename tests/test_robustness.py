"""`minimind course --robustness`: every lesson checked across runs of other seeds and kernels."""
import json
import subprocess
import sys

import pytest

from minimind.course.robustness import LESSONS, conditions, format_robustness, robustness


def _run(tmp_path, name, seed, kernels, **chapters):
    run = tmp_path / name
    (run / "report").mkdir(parents=True)
    (run / "conditions.json").write_text(json.dumps({"seed": seed, "kernels": kernels, "cpu": "Test CPU",
                                                     "torch": "0"}))
    for chapter, metrics in chapters.items():
        (run / "report" / f"{chapter}.json").write_text(json.dumps({"chapter": chapter, **metrics}))
    return run


def _tools(sft, spread, before=0.5, after=0.6, after_spread=0.02):
    return {"no_tools": 0.0, "tool_sft": sft, "tool_sft_spread": spread, "agent_before": before,
            "agent_after": after, "agent_after_spread": after_spread}


def test_a_lesson_holds_when_its_mean_gain_exceeds_the_spread_across_seeds(tmp_path):
    runs = [_run(tmp_path, f"s{s}", s, "native", **{"07_pretrain": {"unigram_loss": 5.0, "val_loss": v}})
            for s, v in enumerate((0.90, 0.95, 0.88))]
    result = robustness(runs)
    [group] = result["groups"]
    assert group["gains"] == pytest.approx([4.10, 4.05, 4.12])
    assert group["mean"] == pytest.approx(4.09) and group["spread"] == pytest.approx(0.07)
    assert group["holds"] and result["all_hold"]
    assert "| 07_pretrain |" in format_robustness(result) and "| yes |" in format_robustness(result)


def test_a_gain_smaller_than_its_spread_does_not_hold(tmp_path):
    # chapter 12's traces against direct answers, as seen on two CPUs: +5 and -1 points
    runs = [_run(tmp_path, f"s{s}", s, "native", **{"12_distill": {
        "student_val_loss": 1.0, "student_kd_val_loss": 0.9, "multistep_accuracy_traces": t,
        "multistep_accuracy_direct": d}}) for s, (t, d) in enumerate(((0.46, 0.41), (0.33, 0.34)))]
    groups = {g["claim"]: g for g in robustness(runs)["groups"]}
    traces = next(g for claim, g in groups.items() if "traces" in claim)
    kd = next(g for claim, g in groups.items() if "teacher" in claim)
    assert not traces["holds"] and traces["spread"] == pytest.approx(0.06)
    assert kd["holds"]
    # chapter 12 measures the traces without promising they win: the runs' lessons all hold
    assert not traces["taught"] and robustness(runs)["all_hold"]
    assert "*measured*: traces" in format_robustness(robustness(runs))


def test_a_run_whose_gain_is_inside_its_own_seeds_spread_fails_the_lesson(tmp_path):
    # one run's own three tool-SFT seeds far apart (as 37-88% on one CPU), and its RL below its start
    good = [_run(tmp_path, f"s{s}", s, "native", **{"14_tools": _tools(0.9, 0.05)}) for s in range(2)]
    bad = _run(tmp_path, "bad", 2, "native", **{"14_tools": _tools(0.7, 0.75, after=0.48, after_spread=0.08)})
    groups = robustness(good + [bad])["groups"]
    sft = next(g for g in groups if "tool SFT" in g["claim"])
    rl = next(g for g in groups if "agentic RL" in g["claim"])
    assert sft["mean"] > sft["spread"] and not sft["holds"]  # across runs fine, but one run's own seeds are not
    assert not rl["holds"]  # that run's RL lost ground
    assert robustness(good)["all_hold"]


def _rl(start, ppo, spread):
    return {"sft_heldout_accuracy": start, **{f"{n}_heldout_accuracy": ppo for n in ("ppo", "grpo", "spo")},
            **{f"{n}_heldout_accuracy_spread": spread for n in ("ppo", "grpo", "spo")}}


def test_rl_is_judged_inside_each_course_run_against_its_own_seeds(tmp_path):
    # as measured: one course run's SFT model starts at 37%, another's at 71%, so RL's gains differ across runs
    # (+40 and +12 points, further apart than their mean) while each beats its own RL seeds' spread
    runs = [_run(tmp_path, "s0", 0, "native", **{"11_rl": _rl(0.37, 0.775, 0.12)}),
            _run(tmp_path, "s1", 1, "native", **{"11_rl": _rl(0.71, 0.826, 0.005)})]
    ppo = next(g for g in robustness(runs)["groups"] if g["claim"].startswith("PPO"))
    assert ppo["spread"] > ppo["mean"] and ppo["within_run"] and ppo["holds"]
    assert "PPO raises held-out accuracy over SFT (*per run*)" in format_robustness(robustness(runs))
    inside = _run(tmp_path, "s2", 2, "native", **{"11_rl": _rl(0.5, 0.55, 0.08)})  # +5, its seeds 8 apart
    assert not next(g for g in robustness(runs + [inside])["groups"] if g["claim"].startswith("PPO"))["holds"]


def test_a_chapter_that_failed_in_a_run_does_not_hold(tmp_path):
    good = _run(tmp_path, "s0", 0, "native", **{"14_tools": _tools(0.9, 0.05)})
    bad = _run(tmp_path, "s1", 1, "native")
    (bad / "failed.json").write_text(json.dumps({"14_tools": "AssertionError: agentic RL did not raise task success"}))
    result = robustness([good, bad])
    assert [g["holds"] for g in result["groups"]] == [False, False]
    assert result["groups"][0]["gains"][1] is None
    assert "failed" in format_robustness(result) and "AssertionError: agentic RL" in format_robustness(result)


def test_a_chapter_that_recorded_before_its_check_failed_is_judged_lesson_by_lesson(tmp_path):
    # chapter 11 records, then asserts that every algorithm learned: one algorithm inside its spread stops the
    # chapter, and only that algorithm's lesson fails
    rl = _rl(0.58, 0.80, 0.02)
    rl.update(grpo_heldout_accuracy=0.74, grpo_heldout_accuracy_spread=0.173)
    run = _run(tmp_path, "s2", 2, "native", **{"11_rl": rl})
    (run / "failed.json").write_text(json.dumps({"11_rl": "AssertionError: an algorithm did not beat the SFT model"}))
    holds = {g["claim"].split()[0]: g["holds"] for g in robustness([run])["groups"]}
    assert holds == {"PPO": True, "GRPO": False, "SPO": True}
    assert "AssertionError: an algorithm did not beat" in format_robustness(robustness([run]))


def test_runs_are_grouped_by_kernels(tmp_path):
    runs = [_run(tmp_path, f"{k}{s}", s, k, **{"08_sft": {"heldout_exact_match": 0.4 + 0.01 * s,
                                                           "base_heldout_exact_match": 0.08}})
            for k in ("native", "ATEN_CPU_CAPABILITY=avx2") for s in range(3)]
    groups = robustness(runs)["groups"]
    assert [g["kernels"] for g in groups] == ["ATEN_CPU_CAPABILITY=avx2", "native"]
    assert all(g["seeds"] == [0, 1, 2] for g in groups)


def test_every_lesson_reads_what_its_chapter_records():
    """The measures each lesson reads are the ones the chapter's record() call writes."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for lesson in LESSONS:
        source = (root / "notebooks" / f"{lesson.chapter}.py").read_text()

        class Probe(dict):
            def __missing__(self, key):
                assert key in source or key.split("_", 1)[-1] in source, f"{lesson.chapter} records no {key}"
                return 0.0
        lesson.gain(Probe())
        if lesson.spread:
            lesson.spread(Probe())


def test_a_run_without_conditions_gets_a_clear_error(tmp_path):
    (tmp_path / "report").mkdir()
    with pytest.raises(FileNotFoundError, match="minimind course --seed"):
        robustness([tmp_path])


def test_conditions_name_the_kernels_asked_for(monkeypatch):
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert conditions()["kernels"] == "ATEN_CPU_CAPABILITY=avx2"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert conditions()["kernels"] == "native"


def test_the_command_exits_1_when_a_lesson_does_not_hold(tmp_path):
    runs = [_run(tmp_path, f"s{s}", s, "native", **{"09_lora": {"skill_before": 0.1, "skill_after": a}})
            for s, a in enumerate((0.2, 0.05))]
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-m", "minimind", "course", "--robustness", *map(str, runs),
                           "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "**no**" in done.stdout and json.loads(out.read_text())["all_hold"] is False


def test_the_book_shows_the_robustness_tables_of_their_json():
    """Each table of book/robustness.md is the JSON its block names, as `minimind course --robustness --page`
    wrote it (the page has at least the main one)."""
    import re
    from pathlib import Path

    from minimind.course.robustness import ROBUST_BEGIN, ROBUST_END
    from minimind.use.bench_report import page_tables
    root = Path(__file__).resolve().parents[1]
    text = (root / "book" / "robustness.md").read_text()
    names = re.findall(re.escape(ROBUST_BEGIN).replace(re.escape("{json}"), "(.+?)"), text)
    assert "book/robustness.json" in names
    for name in names:
        result = json.loads((root / name).read_text())
        assert page_tables(text, name, ROBUST_BEGIN, ROBUST_END) == format_robustness(result), \
            f"rerun: minimind course --robustness RUN... --json {name} --page book/robustness.md"
