"""Helpers chapters 10 (DPO) and 11 (RL) use: pair log-probs, the held-out preference callback, which side
of a pair a reply is closer to, and greedy accuracy on RL prompts with checkable answers."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from alignment_helpers import ToyTokenizer, preference_items, toy_model

from minimind.align.dpo import (
    DPOStage,
    frozen_copy,
    pair_logprobs,
    preference_accuracy,
    preference_callback,
    reply_side,
)
from minimind.train.loop import train_records
from minimind.use.eval import rl_accuracy


def test_pair_logprobs_agree_with_preference_accuracy():
    tok = ToyTokenizer()
    model, ref = toy_model(tok, seed=0), toy_model(tok, seed=1)
    items = preference_items(tok, n=5)
    pc, pr = pair_logprobs(model, items, batch_size=2)   # batches of 2 and a last one of 1
    rc, rr = pair_logprobs(ref, items)
    assert pc.shape == pr.shape == (5,) and (pc < 0).all() and (pr < 0).all()
    margins = 0.3 * ((pc - rc) - (pr - rr))
    expected = preference_accuracy(model, ref, items, beta=0.3)
    assert expected["margin"] == pytest.approx(margins.mean().item(), abs=1e-5)
    assert expected["accuracy"] == pytest.approx((margins > 0).float().mean().item())


def test_preference_callback_is_a_tie_at_the_reference_and_rises_with_dpo():
    tok = ToyTokenizer()
    model = toy_model(tok)
    callback = preference_callback(frozen_copy(model), preference_items(tok, n=6, seed=1), beta=0.5)
    start = callback(0, model)
    assert start == {"val_reward_accuracy": 0.0, "val_reward_margin": pytest.approx(0.0, abs=1e-6)}
    model.train()
    train_records(model, DPOStage(beta=0.5), preference_items(tok, n=16), max_steps=8, batch_size=4, lr=3e-3,
                  device="cpu")
    after = callback(8, model)
    assert after["val_reward_accuracy"] == 1.0 and after["val_reward_margin"] > 0


def test_reply_side():
    assert reply_side("Fopo is a weaver.", "Fopo is a weaver.", "Fopo is a shepherd.") == "chosen"
    assert reply_side("go away, I am busy", "3 plus 4 is 7.", "Go away. I am busy.") == "rejected"
    assert reply_side("3 plus 4 is 7", "3 plus 4 is 7.", "No. Go away.") == "chosen"
    assert reply_side("", "ab", "cd") == "tie"


class AnswersSeven:
    """A stand-in model whose greedy reply is "it is 7." to every prompt (one token per call, KV cache or not)."""
    device = torch.device("cpu")
    config = SimpleNamespace(max_position_embeddings=256)
    training = False

    def __init__(self, tok):
        self.reply, self.vocab = tok.encode("it is 7.") + [tok.eos_token_id], tok.vocab_size
        self.calls = 0

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, input_ids, past_key_values=None, **kw):
        self.calls = 0 if past_key_values is None else self.calls + 1  # a new batch starts without a cache
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, -1, self.reply[min(self.calls, len(self.reply) - 1)]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values="cache")


def test_rl_accuracy_grades_checkable_answers_and_skips_the_rest(tmp_path):
    tok = ToyTokenizer()
    rows = [{"conversations": [{"role": "user", "content": "what is 3 plus 4?"}], "answer": "7"},
            {"conversations": [{"role": "user", "content": "what is 2 plus 2?"}], "answer": "4"},
            {"conversations": [{"role": "user", "content": "what is 9 minus 2?"}], "answer": 7},
            {"conversations": [{"role": "user", "content": "write a poem"}]},                 # no answer: skipped
            {"conversations": [{"role": "user", "content": "hello"}], "answer": ""}]            # empty: skipped
    file = tmp_path / "rl.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = rl_accuracy(AnswersSeven(tok), tok, file, batch_size=2)
    assert result["n"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert [r["correct"] for r in result["rows"]] == [True, False, True]
    assert result["rows"][0]["output"] == "it is 7."
    assert rl_accuracy(AnswersSeven(tok), tok, file, limit=1)["n"] == 1
    open_ended = tmp_path / "rlaif.jsonl"
    open_ended.write_text(json.dumps(rows[3]) + "\n")
    none = rl_accuracy(AnswersSeven(tok), tok, open_ended)
    assert none["n"] == 0 and math.isnan(none["accuracy"])


def test_running_mean_and_side_by_side_plot():
    import matplotlib
    matplotlib.use("Agg")
    from minimind.course.plots import plot_runs_side_by_side, running_mean
    assert running_mean([1, 3, 5, 7], 2) == [1, 2, 4, 6]
    assert running_mean([1, 3, 5], 1) == [1, 3, 5] and running_mean([], 3) == []
    runs = {"a": [{"step": s, "reward_mean": s / 10, "kl": 0.01 * s} for s in range(1, 6)],
            "b": [{"step": s, "reward_mean": 0.5} for s in range(1, 6)]}     # b has no kl: its line is skipped
    fig = plot_runs_side_by_side(runs, smooth=3)
    top, kl = fig.axes
    assert len(top.get_lines()) == 4 and len(kl.get_lines()) == 2      # raw + smoothed per run that has the key
    assert list(top.get_lines()[1].get_ydata()) == pytest.approx(running_mean([0.1, 0.2, 0.3, 0.4, 0.5], 3))


def test_course_rl_prompts_ask_known_facts_in_new_words_about_held_out_subjects():
    """Chapter 11's task: every RL prompt asks a fact the SFT data teaches, in a wording the SFT data never uses,
    and the held-out prompts ask about subjects (people, places) that no training prompt mentions."""
    from course_helpers import course

    from minimind.data.corpus import LEXICONS
    from minimind.data.records import read_jsonl
    paths = course("mini")
    world = json.loads(paths["world"].read_text())
    known = {(f["subject"], f["value"]) for f in world["facts"] if f["split"] == "sft"}
    subjects = {s for s, _ in known}
    sft_questions = {m["content"] for r in read_jsonl(paths["sft"]) for m in r["conversations"] if m["role"] == "user"}
    train, val = read_jsonl(paths["rl"], "rl"), read_jsonl(paths["rl_val"], "rl")
    assert len(val) >= 20 and len(train) >= 20

    def subject_and_question(record):
        question = record["conversations"][-1]["content"]
        named = {s for s in subjects if s in question.replace("?", " ").replace(".", " ").replace("'s", " ").split()}
        assert len(named) == 1, question
        return named.pop(), question
    seen = {}
    for name, records in (("train", train), ("val", val)):
        seen[name] = set()
        for record in records:
            subject, question = subject_and_question(record)
            assert (subject, record["answer"]) in known and question not in sft_questions, question
            seen[name].add(subject)
    assert seen["train"] and seen["val"] and not seen["train"] & seen["val"]
    assert set(LEXICONS["en"]["rl_ask"]) <= set(LEXICONS["en"]["relations"])
