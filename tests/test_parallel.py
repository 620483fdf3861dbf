"""Runs side by side in one-thread processes give exactly what each run gives alone in one thread."""
import pytest
import torch
from course_helpers import course
from safetensors.torch import load_file

from minimind.train import read_metrics, train_stage
from minimind.train.parallel import train_side_by_side


def _weights(folder):
    return load_file(folder / "model.safetensors")


def test_grpo_runs_side_by_side_equal_the_same_runs_alone(tmp_path, capsys):
    paths = course()
    init = tmp_path / "sft"
    train_stage("sft", init, data=paths["sft"], tokenizer=paths["tokenizer"], max_steps=2, batch_size=4,
                seq_len=64, device="cpu", progress=False)

    def job(seed, folder):
        return dict(stage="grpo", out=tmp_path / folder / f"seed{seed}", data=paths["rl"], init=init,
                    stage_kwargs=dict(group_size=4, max_new_tokens=6, reward="rule"), max_steps=3, batch_size=2,
                    lr=1e-3, seed=seed, device="cpu")

    threads = torch.get_num_threads()
    together = dict(train_side_by_side({seed: job(seed, "together") for seed in (0, 1)}, workers=2))
    assert torch.get_num_threads() == threads  # the caller's threads come back
    assert sorted(together) == [0, 1] and together[0]["steps"] == 3 and "model" not in together[0]
    lines = capsys.readouterr().out.strip().splitlines()  # the progress: a head line, then at most one per tenth
    assert lines[0].startswith("2 runs, 6 steps in all, 2 at a time") and 2 <= len(lines) <= 8
    assert lines[-1].startswith("6/6 steps, 2/2 runs done")
    # each run alone, in a fresh one-thread process (as the docstring promises; the test process's own torch
    # settings, which other tests may have changed, play no part)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from minimind.train.parallel import _run_job
    for seed in (0, 1):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_run_job, job(seed, "alone")).result()
    for seed in (0, 1):
        a, b = _weights(tmp_path / "together" / f"seed{seed}"), _weights(tmp_path / "alone" / f"seed{seed}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        rewards = [[r["reward_mean"] for r in read_metrics(tmp_path / where / f"seed{seed}") if "reward_mean" in r]
                   for where in ("together", "alone")]
        assert rewards[0] == rewards[1] and len(rewards[0]) == 3
    # two seeds are two different runs
    a, b = _weights(tmp_path / "together" / "seed0"), _weights(tmp_path / "together" / "seed1")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_job_names_its_stage_and_folder_and_passes_no_objects(tmp_path):
    with pytest.raises(ValueError, match="needs stage and out"):
        next(train_side_by_side({"a": dict(stage="sft")}))
    with pytest.raises(ValueError, match="passes model as an object.*init=FOLDER"):
        next(train_side_by_side({"a": dict(stage="sft", out=tmp_path, model=object())}))
    with pytest.raises(ValueError, match="passes tokenizer as an object"):
        next(train_side_by_side({"a": dict(stage="sft", out=tmp_path, tokenizer=object())}))


def test_a_failing_run_raises_in_the_caller(tmp_path):
    jobs = {k: dict(stage="sft", out=tmp_path / k, data=tmp_path / "missing.jsonl", tokenizer=tmp_path, max_steps=1)
            for k in "abcdef"}
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(train_side_by_side(jobs, workers=2))


def test_progress_counts_only_the_steps_a_run_logged_since_it_started(tmp_path):
    import os
    import time

    from minimind.train.parallel import _steps_done
    file = tmp_path / "metrics.jsonl"
    file.write_text('{"step": 60, "loss": 1.0}\n')  # a previous run's log in the same folder
    os.utime(file, (time.time() - 100, time.time() - 100))
    assert _steps_done(tmp_path, since=time.time() - 10) == 0
    file.write_text('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')  # the new run, a line half written
    assert _steps_done(tmp_path, since=time.time() - 10) == 3
    assert _steps_done(tmp_path / "none", since=0) == 0
