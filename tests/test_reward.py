"""Rewards: rule functions on crafted strings, the course reward model (a scalar head), and a local
transformers reward model, with nothing downloaded."""
import pytest
import torch
from alignment_helpers import ToyTokenizer, bpe_tokenizer, preference_items, toy_model

from minimind.align.dpo import preference_collate
from minimind.align.reward import (
    CombinedReward,
    ModelReward,
    RewardStage,
    RuleReward,
    ScalarHeadModel,
    TransformersReward,
    answer_reward,
    chat_messages,
    final_answer,
    last_token_index,
    length_penalty,
    load_reward,
    repetition_penalty,
    think_format_reward,
    think_tag_reward,
)
from minimind.train.loop import train_records


# -- rules ---------------------------------------------------------------------------------------------
def test_final_answer_skips_the_reasoning():
    assert final_answer("<think>\n3 plus 4 is 8?\n</think>\n3 plus 4 is 7.") == "3 plus 4 is 7."
    assert final_answer("<think>\nx\n</think>\n<answer>\nBo\n</answer>") == "Bo"
    assert final_answer("  plain  ") == "plain"


@pytest.mark.parametrize("response, answer, expected", [
    ("3 plus 4 is 7.", "7", 1.0),
    ("3 plus 4 is 17.", "7", 0.0),                      # containment would say yes
    ("8 minus 4 is 5.", "4", 0.0),                      # the operand is not the answer: the last number is
    ("<think>\n8 minus 4 is 4.\n</think>\nIt is 4.", "4", 1.0),
    ("<think>\nmaybe 7\n</think>\nIt is 6.", "7", 0.0),  # right in the reasoning, wrong in the answer
    ("Ada lives in rivertown.", "Rivertown", 1.0),
    ("Ada lives in Rivertowns.", "Rivertown", 0.0),     # whole words only
    ("anything", None, 0.0),
    ("anything", "", 0.0),                              # RLPromptDataset's "no answer"
    ("7.0", "7", 1.0),
])
def test_answer_reward(response, answer, expected):
    assert answer_reward(response, answer) == expected


def test_format_and_tag_rewards():
    good = "<think>\n3 plus 4 is 7.\n</think>\n3 plus 4 is 7."
    assert think_format_reward(good) == 1.0 and think_tag_reward(good) == 1.0
    assert think_format_reward("<think>\nhmm\n</think>\n") == 0.0         # no answer after the reasoning
    assert think_format_reward("3 plus 4 is 7.") == 0.0 and think_tag_reward("3 plus 4 is 7.") == 0.0
    assert think_format_reward("<think>\nhmm\n</think>\n<think>\nagain\n</think>\nx") == 0.0
    assert think_tag_reward("<think>\nhmm, 7.") == 0.5                    # half way there
    assert think_tag_reward("<think><think></think>") == 0.5


def test_length_and_repetition_penalties():
    assert length_penalty("one two three", max_words=4) == 0.0
    assert length_penalty(" ".join(["w"] * 6), max_words=4) == -0.5    # 2 words over, of 4
    assert length_penalty(" ".join(["w"] * 20), max_words=4) == -1.0
    assert length_penalty("   ") == -1.0
    assert repetition_penalty("the cat sat on the mat") == 0.0
    # 7 trigrams, 3 distinct: 4 of 7 repeat an earlier one
    assert repetition_penalty("a b c a b c a b c") == pytest.approx(-4 / 7)
    assert repetition_penalty("too short") == 0.0


def test_rule_reward_weights_and_range():
    fn = RuleReward(answer=1.0, format=0.5, length=0.5, max_words=6)
    scores = fn([None, None], ["<think>\nok\n</think>\nIt is 7.", "It is 7, I think, maybe, or 8."], ["7", "7"])
    # first: right (1) + format (0.5), 6 words; second: wrong (the last number is 8), no format, and
    # 8 words, 2 over 6: 0.5 * -(2 / 6)
    assert scores.tolist() == pytest.approx([1.5, -1 / 6])
    assert fn.reward_range == (-0.5, 1.5)
    assert RuleReward().reward_range == (0.0, 1.0)
    both = CombinedReward((1.0, RuleReward()), (-2.0, RuleReward(answer=0, tags=1.0)))
    assert both(None, ["<think>\nx</think> 7"], ["7"]).tolist() == [1.0 - 2.0]
    assert both.reward_range == (-2.0, 1.0)


def test_chat_messages_reads_chatml_or_messages():
    text = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert chat_messages(text) == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    msgs = [{"role": "user", "content": "x"}]
    assert chat_messages(msgs) == msgs and chat_messages(msgs) is not msgs


# -- the course reward model ------------------------------------------------------------------------------
def test_last_token_index_left_and_right_padding():
    ids = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(ids, mask).tolist() == [2, 4, 4]
    assert last_token_index(ids).tolist() == [4, 4, 4]


def test_scalar_head_scores_ignore_padding_and_round_trip(tmp_path):
    tok = ToyTokenizer()
    rm = ScalarHeadModel.from_causal_lm(toy_model(tok)).eval()
    ids = torch.tensor([tok.encode("hello there")])
    alone = rm.sequence_score(ids)
    right = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = (torch.arange(right.shape[1]) < ids.shape[1]).long()[None]
    torch.testing.assert_close(rm.sequence_score(right, mask), alone)
    left = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
    torch.testing.assert_close(rm.sequence_score(left, mask.flip(1)), alone, rtol=1e-4, atol=1e-5)
    rm.save_pretrained(tmp_path)
    again = ScalarHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again.sequence_score(ids), alone)
    assert isinstance(load_reward(str(tmp_path), tokenizer=tok), ModelReward)


def test_reward_model_ranks_chosen_over_rejected_after_training(tmp_path):
    tok = ToyTokenizer()
    rm = ScalarHeadModel.from_causal_lm(toy_model(tok))
    held_out = preference_collate(preference_items(tok, n=8, seed=1))
    records = train_records(rm, RewardStage(), preference_items(tok, n=16), out_dir=tmp_path, max_steps=10,
                          batch_size=4, lr=3e-3, device="cpu")
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["accuracy"] == 1.0
    rm.eval()
    with torch.no_grad():
        chosen, rejected = rm.sequence_score(held_out["input_ids"], held_out["attention_mask"]).chunk(2)
    assert (chosen > rejected).all()
    # the run folder is a reward function for RL: right answers score above "go away."
    reward = load_reward(str(tmp_path), tokenizer=tok)
    prompt = tok.apply_chat_template([{"role": "user", "content": "what is 2 plus 5?"}], add_generation_prompt=True)
    good, bad = reward([prompt, prompt], ["2 plus 5 is 7.", "go away."]).tolist()
    assert good > bad and reward.reward_range == (-3.0, 3.0)


def test_model_reward_scores_the_rendered_conversation():
    tok = ToyTokenizer()
    rm = ScalarHeadModel.from_causal_lm(toy_model(tok, seed=3))
    reward = ModelReward(rm, tok, clip=100.0)
    msgs = [{"role": "user", "content": "hi"}]
    scores = reward([msgs, msgs], ["hello.", "a longer reply here."])
    for score, response in zip(scores, ["hello.", "a longer reply here."]):
        chat = msgs + [{"role": "assistant", "content": response}]
        ids = torch.tensor([tok.apply_chat_template(chat, tokenize=True)])
        assert score.item() == pytest.approx(rm.sequence_score(ids).item(), abs=1e-5)
    assert ModelReward(rm, tok, clip=1e-3)([msgs], ["hello."]).abs().item() == pytest.approx(1e-3)  # clipped


def test_load_reward_specs():
    assert isinstance(load_reward("rule"), RuleReward)
    assert load_reward("rule+format").weights["format"] > 0
    with pytest.raises(ValueError, match="no config.json"):
        load_reward("/nonexistent/reward-model")


# -- a transformers reward model in a local folder ------------------------------------------------------------
@pytest.mark.slow
def test_transformers_reward_model_from_a_local_folder(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification
    tok = bpe_tokenizer()
    tok.save_pretrained(tmp_path)  # a chat-templated tokenizer AutoTokenizer reads
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)

    calls = []
    real = AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    reward = load_reward(str(tmp_path), clip=50.0)
    assert isinstance(reward, TransformersReward) and calls[0]["local_files_only"] is True

    prompt = tok.apply_chat_template([{"role": "user", "content": "what is 3 plus 4?"}], add_generation_prompt=True)
    responses = ["3 plus 4 is 7.", "go away, go away, go away."]  # different lengths: padding in the batch
    scores = reward([prompt, prompt], responses)
    model = real(str(tmp_path)).eval()
    for score, response in zip(scores, responses):
        ids = tok.apply_chat_template([{"role": "user", "content": "what is 3 plus 4?"},
                                       {"role": "assistant", "content": response}], tokenize=True)
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0, 0].item()
        assert score.item() == pytest.approx(expected, abs=1e-4)
    assert scores[0] != scores[1]


def test_transformers_reward_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        TransformersReward(tmp_path / "internlm2-1_8b-reward")
