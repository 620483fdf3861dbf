"""Agentic RL: multi-turn rollouts that call tools, the loss on the model's own tokens only, CISPO's weights."""
import pytest
import torch
from tiny_checkpoint import LINES

from minimind.align.agent import AgentStage, cispo_loss, turn_suffix, with_tools
from minimind.data.tokenizer import render_chat, train_tokenizer
from minimind.model.tools import calculator

ADD_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 17, "b": 25}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(LINES, vocab_size=400, template="minimind3")


@pytest.mark.parametrize("template", ["minimind3", "minimind2"])
def test_the_turn_after_a_call_is_the_templates_own(template):
    user = [{"role": "user", "content": "17 + 25?"}]
    call = {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": {"a": 17, "b": 25}}]}
    whole = render_chat(user + [call, {"role": "tool", "content": "42"}], add_generation_prompt=True,
                        template=template)
    pieced = render_chat(user, add_generation_prompt=True, template=template) + ADD_CALL + "<|im_end|>" + \
        turn_suffix(template, ["42"])
    assert pieced == whole  # (minimind-3's prompt wrote the empty think block its assistant turn opens with)
    tools = calculator().schemas()
    assert with_tools(render_chat(user, add_generation_prompt=True, template=template), template, tools) == \
        render_chat(user, add_generation_prompt=True, template=template, tools=tools)


def test_cispo_weights_are_clipped_from_above_and_held_constant():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-3.0, -2.0]])  # ratios e^2 = 7.4 (clipped to 5) and 1
    adv = torch.tensor([0.5])
    loss = cispo_loss(logp, old, adv, torch.ones(1, 2), eps_high=5.0)
    torch.testing.assert_close(loss, -(torch.tensor([[5.0, 1.0]]) * 0.5 * logp.detach()))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.5, -0.5]]))  # -w * A: the weight is not differentiated


class ScriptedPolicy:
    """generate() appends the next scripted turn (then EOS) to each row, in order: stands in for the model."""

    def __init__(self, tok, turns):
        from minimind import MiniMindConfig
        self.tok, self.turns, self.device = tok, list(turns), torch.device("cpu")
        self.config = MiniMindConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)
        self.seen = []

    def generate(self, ids, max_new_tokens, attention_mask=None, shared_prefix=None, **kw):
        prefix = shared_prefix[0].tolist() if shared_prefix is not None else []  # the tools block, run once
        self.seen.append([self.tok.decode(prefix + row[m.bool()].tolist()) for row, m in zip(ids, attention_mask)])
        rows = [self.tok.encode(self.turns.pop(0)) + [self.tok.eos_token_id] for _ in range(ids.shape[0])]
        width = max(map(len, rows))
        new = torch.tensor([r + [self.tok.eos_token_id] * (width - len(r)) for r in rows])
        return torch.cat([ids, new], dim=1)


def test_a_rollout_masks_the_tool_results_and_rewards_the_answer(tok):
    stage = AgentStage("rule", tok, tools="calculator", group_size=2, max_new_tokens=64)
    policy = ScriptedPolicy(tok, [ADD_CALL, "The answer is 41.", "The answer is 42."])  # row 0, row 1, row 0
    prompt = render_chat([{"role": "user", "content": "What is 17 plus 25?"}], add_generation_prompt=True,
                         template="minimind3")
    rollout = stage.sample(policy, {"prompt": [prompt], "prompt_ids": [[0]], "answer": ["42"]})
    assert rollout.responses == ["The answer is 42.", "The answer is 41."]
    assert rollout.data["tool_calls"].tolist() == [1.0, 0.0] and rollout.data["turns"].tolist() == [2.0, 1.0]
    task = stage.task_rewards(rollout)
    assert task.tolist() == [1.0, 0.0]
    assert (task + stage.format_rewards(rollout)).tolist() == pytest.approx([1.1, 0.0])  # + format_weight: good call
    # what the model wrote is learned; the tool's result (and the template around it) is only read
    p = rollout.sequences.shape[1] - rollout.response_len
    first = rollout.sequences[0, p:][rollout.attention_mask[0, p:].bool()]
    written = tok.decode(first[rollout.mask[0, :len(first)].bool()].tolist())
    read = tok.decode(first[~rollout.mask[0, :len(first)].bool()].tolist())
    assert ADD_CALL in written and "The answer is 42." in written and "42" not in written.replace(
        ADD_CALL, "").replace("The answer is 42.", "")
    assert read.startswith("\n<|im_start|>user\n<tool_response>\n42\n</tool_response>")
    assert "<tools>" in tok.decode(rollout.sequences[0, :p].tolist())  # the prompt shows the tools
    # the two rollouts generated together; the second turn only for the one that called, after its result
    assert [len(batch) for batch in policy.seen] == [2, 1]
    assert policy.seen[1][0].endswith("<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
                                      "<think>\n\n</think>\n\n")


def test_the_agent_stage_needs_a_template_with_tools():
    course = train_tokenizer(LINES, vocab_size=400)
    with pytest.raises(ValueError, match="--template minimind3"):
        AgentStage("rule", course)


def test_the_call_format_reward_is_per_episode_so_extra_calls_earn_nothing(tok):
    stage = AgentStage("rule", tok, tools="calculator", group_size=3, max_new_tokens=64, format_weight=0.1)
    broken = '<tool_call>\n{"name": "add", "arguments": {"a": 17\n</tool_call>'
    # row 0 calls once, row 1 twice, row 2 writes a broken call; each then answers wrongly (turn by turn, row by row)
    policy = ScriptedPolicy(tok, [ADD_CALL, ADD_CALL, broken, "41", ADD_CALL, "41", "41"])
    prompt = render_chat([{"role": "user", "content": "What is 17 plus 25?"}], add_generation_prompt=True,
                         template="minimind3")
    rollout = stage.sample(policy, {"prompt": [prompt], "prompt_ids": [[0]], "answer": ["42"]})
    assert rollout.data["tool_calls"].tolist() == [1.0, 2.0, 0.0]
    assert rollout.data["broken_calls"].tolist() == [0.0, 0.0, 1.0]
    rewards = stage.task_rewards(rollout) + stage.format_rewards(rollout)
    assert rewards.tolist() == pytest.approx([0.1, 0.1, -0.1])


def test_rollouts_run_the_shared_tools_prompt_once_and_write_the_same_tokens(tok):
    from conftest import random_model, small_config

    from minimind.align.agent import agent_rollouts
    model = random_model(small_config(vocab_size=tok.vocab_size, max_position_embeddings=2048))
    tools = calculator()
    prompts = [tok.encode(with_tools(render_chat([{"role": "user", "content": q}], add_generation_prompt=True,
                                                 template="minimind3"), "minimind3", tools.schemas()))
               for q in ("What is 17 plus 25?", "Add 3 and 4.", "What is 17 plus 25?")]
    runs = {shared: agent_rollouts(model, tok, "minimind3", tools, prompts, max_turns=2, max_new_tokens=12,
                                   min_shared=32 if shared else 10 ** 9) for shared in (True, False)}
    assert [r.ids for r in runs[True]] == [r.ids for r in runs[False]]
    assert runs[True][0].ids == runs[True][2].ids  # the same prompt, the same greedy tokens, whatever its row
