"""SFT, DPO and RL files in MiniMind's tool-call format: a system message's `tools`, an assistant's `tool_calls`
(lists or JSON strings) and `tool` results train and render as minimind-3's template writes them."""
import json
import re

import pytest

from minimind.data.datasets import DPODataset, RLPromptDataset, SFTDataset, chat_labels, chat_tools
from minimind.data.records import DataError, check_file, iter_jsonl, read_jsonl
from minimind.data.tokenizer import render_chat, train_tokenizer

WEATHER = {"type": "function", "function": {"name": "weather", "description": "the weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALLS = [{"name": "weather", "arguments": {"city": "Lumo"}}]
RESULT = '{"sky": "sunny"}'
TEXTS = ["Mira the baker lives in Lumo and likes bread. The sky is sunny.", "What is the weather in Lumo?",
         json.dumps(WEATHER), json.dumps(CALLS), RESULT] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400, template="minimind3")


@pytest.fixture(scope="module")
def course_tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def conversation(tools=(WEATHER,), calls=CALLS, as_json=False) -> list[dict]:
    """A tool round in MiniMind's format; as_json writes `tools` and `tool_calls` as JSON strings, as its files do."""
    tools, calls = list(tools), list(calls)
    return [{"role": "system", "content": "You help.", "tools": json.dumps(tools) if as_json else tools},
            {"role": "user", "content": "What is the weather in Lumo?"},
            {"role": "assistant", "content": "", "tool_calls": json.dumps(calls) if as_json else calls},
            {"role": "tool", "content": RESULT},
            {"role": "assistant", "content": "The sky is sunny."}]


def _write(path, records: list) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_chat_tools_parses_minimind_strings():
    msgs, tools = chat_tools(conversation(as_json=True))
    assert tools == [WEATHER] and msgs[2]["tool_calls"] == CALLS
    assert chat_tools(conversation()) == (conversation(), [WEATHER])
    assert chat_tools([{"role": "user", "content": "hi"}])[1] is None


def test_sft_tool_sample_learns_the_calls_and_answers_only(tok, tmp_path):
    path = _write(tmp_path / "sft.jsonl", [{"conversations": conversation()},
                                           {"conversations": conversation(as_json=True)}])
    assert check_file(path, "sft") == dict(path=path, kind="sft", records=2, bad=0, bad_lines=[], warnings={},
                                           warning_counts={})
    ds = SFTDataset(path, tok, max_len=1024, cache=tmp_path / "cache")
    text = render_chat(conversation(), template="minimind3", tools=[WEATHER])
    assert len(ds) == 2 and ds[0]["input_ids"].tolist() == ds[1]["input_ids"].tolist() == tok.encode(text)
    assert ds[0]["labels"].tolist() == ds[1]["labels"].tolist()
    # by hand: the template's pieces, each tokenized on its own; learned: what the assistant writes
    call = '<tool_call>\n{"name": "weather", "arguments": {"city": "Lumo"}}\n</tool_call>'
    pieces = [("<|im_start|>system\nYou help.\n\n# Tools\n\nYou may call one or more functions to assist with the "
               "user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
               + json.dumps(WEATHER) + "\n</tools>\n\nFor each function call, return a json object with function name "
               "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
               "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWhat is the weather in "
               "Lumo?<|im_end|>\n<|im_start|>assistant\n", False),
              ("<think>\n\n</think>\n\n" + call + "<|im_end|>", True),
              ("\n<|im_start|>user\n<tool_response>\n" + RESULT + "\n</tool_response><|im_end|>\n"
               "<|im_start|>assistant\n", False),
              ("<think>\n\n</think>\n\nThe sky is sunny.<|im_end|>", True), ("\n", False)]
    assert "".join(p for p, _ in pieces) == text
    ids = [i for p, _ in pieces for i in tok.encode(p)]
    labels = [i if keep else -100 for p, keep in pieces for i in tok.encode(p)]
    assert ds[0]["input_ids"].tolist() == ids and ds[0]["labels"].tolist() == labels
    learned = tok.decode([i for i in labels if i != -100])
    think = "<think>\n\n</think>\n\n"
    assert learned == think + call + "<|im_end|>" + think + "The sky is sunny.<|im_end|>"
    assert "sunny\"" not in learned and "# Tools" not in learned and "the weather in a city" not in learned
    assert chat_labels(tok, conversation(as_json=True)) == (ids, labels)
    assert ds.stats["records"] == 2 and ds.stats["dropped_no_target"] == 0


def test_openai_style_calls_and_dpo_pairs_render_the_same(tok):
    openai = [{"type": "function", "function": {"name": "weather", "arguments": json.dumps({"city": "Lumo"})}}]
    assert chat_labels(tok, conversation(calls=openai, as_json=True)) == chat_labels(tok, conversation())
    rejected = conversation()[:2] + [{"role": "assistant", "content": "I do not know."}]
    ds = DPODataset([{"chosen": conversation(as_json=True), "rejected": rejected}], tok, max_len=1024)
    assert ds[0]["chosen_input_ids"].tolist() == chat_labels(tok, conversation())[0]
    # the rejected side has the system message's tools too, and learns only its answer
    rejected_text = render_chat(rejected, template="minimind3", tools=[WEATHER])
    labels = ds[0]["rejected_labels"]
    assert ds[0]["rejected_input_ids"].tolist() == tok.encode(rejected_text) and "# Tools" in rejected_text
    assert tok.decode(labels[labels != -100]) == "<think>\n\n</think>\n\nI do not know.<|im_end|>"


def test_rl_prompts_carry_the_tools_block(tok, tmp_path):
    first = {"conversations": conversation(as_json=True)[:2], "answer": "sunny"}
    later = {"conversations": conversation(as_json=True), "answer": "sunny"}  # the last answer is left out
    ds = RLPromptDataset(_write(tmp_path / "rl.jsonl", [first, later]), tok, cache=tmp_path / "cache")
    expect = [render_chat(conversation()[:2], add_generation_prompt=True, template="minimind3", tools=[WEATHER]),
              render_chat(conversation()[:4], add_generation_prompt=True, template="minimind3", tools=[WEATHER])]
    for item, prompt in zip([ds[0], ds[1]], expect):
        assert item["prompt"] == prompt and item["prompt_ids"].tolist() == tok.encode(prompt)
        assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in prompt and item["answer"] == "sunny"
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<tool_response>\n" + RESULT in ds[1]["prompt"] and "The sky is sunny" not in ds[1]["prompt"]


def test_the_course_template_names_the_line_and_the_fix(course_tok, tmp_path):
    plain = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    path = _write(tmp_path / "sft.jsonl", [plain, {"conversations": conversation(as_json=True)}])
    with pytest.raises(DataError) as err:
        SFTDataset(path, course_tok, cache=tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: ") and "cannot render tools" in msg
    assert "minimind tokenizer train --template minimind3" in msg and "tool calls" in msg
    assert not list((tmp_path / "cache").glob("tables/*sft*"))  # no table is left behind
    only_results = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""},
                    {"role": "tool", "content": RESULT}, {"role": "assistant", "content": "Done."}]
    with pytest.raises(DataError, match=r"sft records\[1\]: .*cannot render tools.*tool results"):
        SFTDataset([plain, {"conversations": only_results}], course_tok)
    rl = _write(tmp_path / "rl.jsonl", [{"conversations": conversation(as_json=True)[:2], "answer": "x"}])
    with pytest.raises(DataError, match=re.escape(rl) + ":1: .*cannot render tools.*--template minimind3"):
        RLPromptDataset(rl, course_tok, cache=tmp_path / "cache")
    with pytest.raises(DataError, match="cannot render tools"):
        chat_labels(course_tok, conversation())
    assert len(SFTDataset([plain], course_tok)) == 1  # what has no tools still renders


BAD_TOOLS = {
    "tools a number": ({"tools": 3}, 0, '"tools" is int, not a list of tool schemas'),
    "tools bad json": ({"tools": "[{"}, 0, '"tools" is a string but not valid JSON'),
    "tools not objects": ({"tools": '["weather"]'}, 0, "tools[0] is str, not an object"),
    "calls a dict": ({"tool_calls": {"name": "weather"}}, 2, '"tool_calls" is dict, not a list of tool calls'),
    "call without name": ({"tool_calls": '[{"arguments": {}}]'}, 2, "tool_calls[0] is not a tool call"),
    "calls on a user": ({"tool_calls": CALLS}, 1, "is a user message with \"tool_calls\""),
    "null content": ({"content": None}, 2, 'content is null: write ""'),
}


@pytest.mark.parametrize("case", list(BAD_TOOLS))
def test_bad_tool_fields_name_file_and_line(tmp_path, case):
    change, index, message = BAD_TOOLS[case]
    msgs = conversation(as_json=True)
    msgs[index] = {**msgs[index], **change}
    path = _write(tmp_path / "bad.jsonl", [{"conversations": conversation()}, {"conversations": msgs}])
    with pytest.raises(DataError) as err:
        check_file(path, "sft")
    assert str(err.value).startswith(f"{path}:2: conversations[{index}]") and message in str(err.value)
    with pytest.raises(DataError, match=f"{path}:2: "):
        list(iter_jsonl(path))
    summary = check_file(path, "sft", skip_bad=True)
    assert summary["records"] == 1 and summary["bad_lines"][0][0] == 2 and message in summary["bad_lines"][0][1]


def test_minimind_files_as_written_are_valid(tmp_path):
    # as MiniMind's datasets library writes them: every field on every message, null where unused
    full = [{"role": m["role"], "content": m["content"], "reasoning_content": None, "tools": m.get("tools"),
             "tool_calls": m.get("tool_calls")} for m in conversation(as_json=True)]
    two_results = conversation()[:3] + [{"role": "tool", "content": RESULT}] + conversation()[3:]
    two_results[2] = {**two_results[2], "tool_calls": CALLS * 2}
    path = _write(tmp_path / "sft.jsonl", [{"conversations": full}, {"conversations": two_results}])
    summary = check_file(path)
    assert summary["kind"] == "sft" and summary["records"] == 2 and summary["bad"] == 0 and not summary["warnings"]
    assert len(read_jsonl(path, "sft")) == 2
