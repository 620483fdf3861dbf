"""DPO: the loss against hand-computed numbers, the stage against its reference, and preference learning."""
import json
import math

import pytest
import torch
from alignment_helpers import ToyTokenizer, bpe_tokenizer, preference_items, toy_model

from minimind.align.dpo import (
    DPOStage,
    dpo_loss,
    frozen_copy,
    pair_logprobs,
    preference_accuracy,
    preference_callback,
    preference_collate,
    reply_side,
    sequence_logprobs,
    token_logprobs,
)
from minimind.data import DPODataset
from minimind.train.loop import read_metrics, train_records


def test_dpo_loss_by_hand():
    # beta 0.1, chosen gained 2 nats over the reference, rejected lost 1: margin 0.1 * (2 - (-1)) = 0.3
    loss, rc, rr = dpo_loss(torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.0]),
                            beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.3)), abs=1e-6)
    assert rc.item() == pytest.approx(0.2) and rr.item() == pytest.approx(-0.1)


def test_dpo_loss_is_log2_at_the_reference_and_falls_as_chosen_rises():
    ref_c, ref_r = torch.tensor([-4.0, -7.0]), torch.tensor([-5.0, -2.0])
    loss, _, _ = dpo_loss(ref_c, ref_r, ref_c, ref_r)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    losses = [dpo_loss(ref_c + up, ref_r, ref_c, ref_r)[0].item() for up in (0.0, 0.5, 1.0, 2.0)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert dpo_loss(ref_c, ref_r + 1.0, ref_c, ref_r)[0].item() > math.log(2)  # rejected rising hurts


def test_sequence_logprobs_sums_the_answer_tokens_only():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3] * 3]]))
    ids = torch.tensor([[0, 1, 2, 0]])
    labels = torch.tensor([[-100, -100, 2, 0]])        # the answer is tokens 2 and 3
    # logits at 1 predict token 2 (p = 0.1), at 2 predict token 3 = id 0 (p = 0.2)
    assert sequence_logprobs(logits, labels).item() == pytest.approx(math.log(0.1) + math.log(0.2), rel=1e-5)
    assert sequence_logprobs(logits, labels, average=True).item() == pytest.approx(
        (math.log(0.1) + math.log(0.2)) / 2, rel=1e-5)
    assert token_logprobs(logits[:, :-1], ids[:, 1:])[0, 0].item() == pytest.approx(math.log(0.25), rel=1e-5)


def test_preference_collate_puts_chosen_first_and_trims_padding():
    tok = ToyTokenizer()
    items = preference_items(tok, n=3)
    padded = dict(items[0])
    padded["chosen_input_ids"] = torch.cat([items[0]["chosen_input_ids"], torch.zeros(20, dtype=torch.long)])
    padded["chosen_labels"] = torch.cat([items[0]["chosen_labels"], torch.full((20,), -100)])
    batch = preference_collate([padded] + items[1:])
    longest = max(len(it[f"{s}_input_ids"]) for it in items for s in ("chosen", "rejected"))
    assert batch["input_ids"].shape == (6, longest)  # 3 chosen then 3 rejected; the 20 pads are gone
    n = len(items[1]["rejected_input_ids"])
    assert torch.equal(batch["input_ids"][4, :n], items[1]["rejected_input_ids"])
    assert batch["attention_mask"][4].sum() == n and (batch["labels"][4, n:] == -100).all()


def test_stage_starts_at_log2_with_zero_rewards():
    tok = ToyTokenizer()
    model = toy_model(tok)
    stage = DPOStage(beta=0.1)
    stage.setup(model, torch.device("cpu"))
    loss, metrics = stage.loss(model, preference_collate(preference_items(tok, n=4)))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["reward_margin"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["logp_chosen"] < 0 and not any(p.requires_grad for p in stage.reference.parameters())


def test_dpo_learns_the_preference_and_keeps_the_reference(tmp_path):
    tok = ToyTokenizer()
    model = toy_model(tok)
    stage = DPOStage(beta=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    records = train_records(model, stage, preference_items(tok, n=16), out_dir=tmp_path, max_steps=8, batch_size=4,
                          lr=3e-3, device="cpu")
    assert len(records) == 8 and records == read_metrics(tmp_path)
    assert records[-1]["loss"] < math.log(2) - 0.1 and records[-1]["reward_margin"] > 0
    assert records[-1]["reward_accuracy"] == 1.0
    for k, v in stage.reference.state_dict().items():  # the reference never moves
        assert torch.equal(v, start[k]), k
    held_out = preference_accuracy(model, stage.reference, preference_items(tok, n=8, seed=1), beta=0.5)
    assert held_out["accuracy"] == 1.0 and held_out["margin"] > 0
    assert (tmp_path / "model.safetensors").exists()


def test_dpo_on_the_course_dataset(tmp_path):
    rows = [{"chosen": [{"role": "user", "content": f"what is {i} plus 1?"},
                        {"role": "assistant", "content": f"{i} plus 1 is {i + 1}."}],
             "rejected": [{"role": "user", "content": f"what is {i} plus 1?"},
                          {"role": "assistant", "content": "go away."}]} for i in range(8)]
    file = tmp_path / "dpo.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = bpe_tokenizer()
    dataset = DPODataset(file, tok, max_len=64)
    batch = preference_collate([dataset[i] for i in range(2)])
    assert (batch["labels"][:, :3] == -100).all() and (batch["labels"] != -100).any()  # answer-only labels
    stage = DPOStage(beta=0.5)
    model = toy_model(tok)
    stage.setup(model, torch.device("cpu"))
    loss, metrics = stage.loss(model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


# -- helpers of chapter 10: pair log-probs, the held-out preference callback, which side a reply is closer to
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
