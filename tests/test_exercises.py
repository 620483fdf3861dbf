"""Every exercise has a hidden solution in its chapter that passes its check (nbval runs them in the notebooks;
this runs them on their own), and a wrong answer is told what is wrong, never shown a traceback."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from minimind import MiniMindConfig
from minimind.course.exercises import EXERCISES, _load, check

ROOT = Path(__file__).resolve().parents[1]
_load()


def _cells(chapter: str) -> list[dict]:
    notebook = next((ROOT / "notebooks").glob(f"{chapter}_*.ipynb"))
    return json.loads(notebook.read_text())["cells"]


def _solution(name: str) -> dict:
    found = [c for c in _cells(name[:2]) if c["cell_type"] == "code"
             and re.search(rf'^assert check\("{re.escape(name)}"', "".join(c["source"]), re.M)]
    assert len(found) == 1, f"{name}: {len(found)} solution cells in its chapter (want one)"
    return found[0]


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_each_exercise_has_a_hidden_solution_that_passes(name, capsys):
    cell = _solution(name)
    assert "hide-input" in cell["metadata"].get("tags", []), f"{name}: the solution is not hidden in the book"
    assert cell["metadata"].get("jupyter", {}).get("source_hidden"), f"{name}: not collapsed in JupyterLab"
    learner = [c for c in _cells(name[:2]) if c["cell_type"] == "code"
               and re.search(rf'^check\("{re.escape(name)}"', "".join(c["source"]), re.M)]
    assert len(learner) == 1, f"{name}: no cell for the learner's answer"
    exec("".join(cell["source"]), {"math": math, "torch": torch, "MiniMindConfig": MiniMindConfig, "check": check})
    assert f"right: {name}" in capsys.readouterr().out


def _wrong_merge(ids, pair, new_id):  # merges overlapping pairs
    return [new_id if (a, b) == pair else a for a, b in zip(ids, ids[1:] + [None])]


WRONG = {
    "01.merge": _wrong_merge,
    "01.most_frequent_pair": lambda ids: tuple(ids[:2]) if len(ids) > 1 else None,
    "01.template_overhead": 1,
    "02.pack": lambda docs, seq_len: [d[:seq_len] for d in docs],
    "02.learned_fraction": 0.99,
    "02.predictions_per_window": 256,
    "03.causal_attention": lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v,
    "03.repeat_kv": lambda x, n: x.repeat(1, n, 1, 1),
    "03.kv_cache_step": lambda q, kc, vc, kn, vn: (q, kc, vc),
    "04.rope": lambda x, positions, theta: x,
    "04.relative": "different",
    "04.longest_wavelength": 1024,
    "05.rms_norm": lambda x, w, eps: torch.nn.functional.layer_norm(x, x.shape[-1:], w, eps=eps),
    "05.swiglu": lambda x, g, u, d: (torch.relu(x @ g.T) * (x @ u.T)) @ d.T,
    "05.count_parameters": lambda c: c.num_hidden_layers * 12 * c.hidden_size ** 2,
    "06.route": lambda logits, k: tuple(torch.softmax(logits, -1).topk(k, -1)),  # not renormalised
    "06.aux_loss": lambda probs, idx, n, alpha: alpha * probs.mean(),
    "06.temperature": "yes",
    "07.next_token_loss": lambda logits, ids: torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()),
    "07.lr_schedule": lambda step, total, lr, warmup, ratio: lr,
    "07.grad_accum": "no",
    "08.sft_loss": lambda logits, labels: torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().clamp(min=0)),
    "08.mean_over_tokens": 1.5,
    "09.lora_merge": lambda W, A, B, alpha, r: W + B @ A,
    "09.lora_parameters": 1000,
    "10.dpo_loss": lambda pc, pr, rc, rr, beta: -torch.nn.functional.logsigmoid(beta * (pr - rr - pc + rc)).mean(),
    "10.loss_at_start": 0.0,
    "11.grpo_advantages": lambda r, g: r - r.view(-1, g).mean(1).repeat_interleave(g),
    "11.k3": lambda logp, ref: logp - ref,
    "11.clipped_gradient": -1.3,
    "12.kd_loss": lambda s, t, y, alpha, T: torch.nn.functional.cross_entropy(s, y),
    "12.softer": "higher",
    "13.perplexity": lambda texts: sum(math.exp(sum(t) / len(t)) for t in texts) / len(texts),
    "13.request": {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 32},
    "14.run_call": '{"result": 41}',
    "14.cispo_loss": lambda logp, old, adv, mask, eps: -(torch.exp(logp - old).clamp(max=eps) * adv[:, None] * logp),
}
TOLD = {  # what the check says to some of the usual mistakes
    "03.causal_attention": "see the future",
    "03.repeat_kv": "tiled",
    "05.rms_norm": "LayerNorm",
    "06.route": "sum to 1",
    "07.next_token_loss": "next one",
    "08.mean_over_tokens": "mean of the two conversations",
    "09.lora_merge": "unscaled",
    "10.dpo_loss": "swapped",
    "11.grpo_advantages": "expected [0.866",  # not divided by the group's standard deviation
    "11.k3": "negative",
    "13.perplexity": "pool every token",
    "13.request": "roles",
    "14.cispo_loss": "detach",
}


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_wrong_answer_is_told_what_is_wrong(name, capsys):
    assert name in WRONG, f"add a wrong answer for {name}"
    assert check(name, WRONG[name]) is False
    out = capsys.readouterr().out
    assert out.startswith(f"not yet ({name}):") and "\nhint: " in out and "Traceback" not in out
    assert TOLD.get(name, "") in out


def test_an_unfinished_answer_or_failing_code_is_one_line_not_a_traceback(capsys):
    def unfinished(ids, pair, new_id):
        ...
    assert check("01.merge", unfinished) is False
    assert "returned None: write its body" in capsys.readouterr().out
    assert check("01.merge", None) is False and "no answer yet" in capsys.readouterr().out
    assert check("03.causal_attention", lambda q, k, v: 1 / 0) is False
    assert "your code raised ZeroDivisionError" in capsys.readouterr().out
    assert check("99.nope", 1) is False and "no exercise '99.nope'" in capsys.readouterr().out
