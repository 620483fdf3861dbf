"""`minimind train STAGE` end to end on the course corpus, every stage chained as the course chains them."""
import json
import subprocess
import sys

import pytest
from course_helpers import course

from minimind.cli import main as cli
from minimind.model import load_checkpoint

COMMON = ["--max-steps", "2", "--batch-size", "2", "--seq-len", "64", "--device", "cpu", "--no-progress",
          "--log-every", "1"]


def run(stage, out, data, *extra):
    assert cli(["train", stage, "--data", str(data), "--out", str(out), *COMMON, *extra]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)  # no NaN
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    return records


@pytest.mark.slow
def test_every_stage_from_the_command_line(tmp_path):
    paths = course()
    tok = ["--tokenizer", str(paths["tokenizer"])]
    run("pretrain", tmp_path / "pretrain", paths["pretrain"], *tok, "--val-data", str(paths["pretrain_val"]),
        "--eval-every", "2")
    init = ["--init", str(tmp_path / "pretrain")]
    run("sft", tmp_path / "sft", paths["sft"], *init)
    model, tokenizer = load_checkpoint(tmp_path / "sft")  # the run folder is a checkpoint with its tokenizer
    assert tokenizer.vocab_size == model.config.vocab_size
    sft = ["--init", str(tmp_path / "sft")]
    run("lora", tmp_path / "lora", paths["lora"], *sft, "--lora-rank", "4")
    assert (tmp_path / "lora" / "adapter.safetensors").exists()
    run("reason", tmp_path / "reason", paths["reason"], *sft, "--tag-weight", "5")
    run("distill", tmp_path / "distill", paths["sft"], *tok, "--teacher", str(tmp_path / "sft"), "--alpha", "0.5")
    dpo = run("dpo", tmp_path / "dpo", paths["dpo"], *sft, "--beta", "0.1")
    assert "reward_accuracy" in dpo[0]
    run("reward", tmp_path / "reward", paths["dpo"], *sft)
    for i, (stage, extra) in enumerate([("ppo", []), ("grpo", ["--group-size", "2"]), ("spo", []),
                                        ("grpo", ["--reward", str(tmp_path / "reward")])]):
        out = tmp_path / f"{stage}-{i}"
        records = run(stage, out, paths["rl"], *sft, "--max-new-tokens", "6", *extra)
        assert "reward_mean" in records[0]


@pytest.mark.slow
def test_console_script_resumes(tmp_path):
    paths = course()
    args = [sys.executable, "-m", "minimind", "train", "pretrain", "--data", str(paths["pretrain"]), "--tokenizer",
            str(paths["tokenizer"]), "--out", str(tmp_path / "run"), "--max-steps", "4", "--batch-size", "2",
            "--seq-len", "32", "--device", "cpu", "--no-progress", "--log-every", "1"]
    straight = subprocess.run(args[:-1] + ["1"], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True)  # already at step 4: no-op
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4 and first["step"] == 4


def test_bad_stage_and_missing_data_are_explained(tmp_path, capsys):
    assert cli(["train", "nonsense", "--data", "x.jsonl", "--out", str(tmp_path)]) == 2
    assert "unknown stage 'nonsense'" in capsys.readouterr().err
    assert cli(["train", "sft", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["train", "pretrain", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path),
                "--resume"]) == 2


def test_the_command_line_is_derived_from_the_stage_registry(capsys):
    from minimind.train import STAGES
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    help_text = capsys.readouterr().out
    for name, stage in STAGES.items():
        assert name in help_text and stage.help.split()[0] in help_text
        for option in stage.options:
            assert "--" + option.replace("_", "-") in help_text, (name, option)


def test_an_option_of_another_stage_is_refused_by_name(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"chosen": [], "rejected": []}\n')
    args = ["train", "dpo", "--data", str(data), "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path)]
    assert cli(args + ["--group-size", "3"]) == 2
    err = capsys.readouterr().err
    assert "stage 'dpo' has no option ['group_size']" in err and "beta" in err  # names what dpo does take
