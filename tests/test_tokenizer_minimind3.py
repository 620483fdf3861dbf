"""MiniMind's published tokenizers (MiniMind2, minimind-3) load as they are, our Python chat templates render
what their Jinja renders, and a course tokenizer trained with template="minimind3" matches minimind-3's."""
import json
import random
from pathlib import Path

import jinja2
import pytest
import transformers
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minimind.cli import main
from minimind.data.datasets import IGNORE_INDEX, _mask  # the SFT label mask, as SFTDataset makes it
from minimind.data.tokenizer import CHAT_TEMPLATES, MiniMindTokenizer, detect_template, render_chat, train_tokenizer

MINIMIND = Path(__file__).parent / "fixtures" / "minimind_tokenizers"
GENERATIONS = ("minimind2", "minimind3")


def fixture_config(generation: str) -> dict:
    return json.loads((MINIMIND / generation / "tokenizer_config.json").read_text(encoding="utf-8"))


def jinja_render(chat_template: str, messages, **kwargs) -> str:
    """The template rendered as transformers renders it (its _compile_jinja_template's environment)."""
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["namespace"] = jinja2.utils.Namespace
    return env.from_string(chat_template).render(messages=messages, **kwargs)


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "天气 of a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}
CALC = {"type": "function", "function": {"name": "calc", "description": "evaluate <expr> & return it",
                                         "parameters": {"type": "object", "properties": {
                                             "expr": {"type": "string"}}}}}
TOOLS = [WEATHER, CALC]
U = {"role": "user", "content": "北京今天天气怎么样？"}
SYSTEM = {"role": "system", "content": "You are minimind, a small model."}


def call(name, arguments, openai=True):
    inner = {"name": name, "arguments": arguments}
    return {"type": "function", "function": inner} if openai else inner


# (conversation, tools): every case the templates branch on
CASES = {
    "plain": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], None),
    "system": ([SYSTEM, {"role": "user", "content": "2 plus 2?"}, {"role": "assistant", "content": "4."}], None),
    "multi_turn": ([SYSTEM, {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                    {"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"},
                    {"role": "user", "content": "and 5 + 6?"}], None),
    "late_system": ([{"role": "user", "content": "a"}, {"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "b"}], None),
    "reasoning": ([{"role": "user", "content": "2 plus 5?"},
                   {"role": "assistant", "content": "\n7.", "reasoning_content": "\n2 plus 5 is 7.\n\n"},
                   {"role": "user", "content": "thanks"},
                   {"role": "assistant", "content": "You're welcome.", "reasoning_content": ""}], None),
    "think_in_content": ([{"role": "user", "content": "3 plus 4?"},
                          {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n7."},
                          {"role": "user", "content": "again"},
                          {"role": "assistant", "content": "only the end tag</think>\n\nseven"},
                          {"role": "user", "content": "and?"},
                          {"role": "assistant", "content": "<think>a</think>b</think>\nc"}], None),
    "tools": ([SYSTEM, U, {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "北京"})]},
               {"role": "tool", "content": '{"temp": 21, "sky": "晴"}'},
               {"role": "assistant", "content": "北京今天晴，21度。"}], TOOLS),
    "tools_no_system": ([U, {"role": "assistant", "content": "Let me look.",
                             "tool_calls": [call("get_weather", '{"city": "北京"}', openai=False)]},
                         {"role": "tool", "content": "sunny"}], TOOLS),
    "parallel_tools": ([U, {"role": "assistant", "content": None, "reasoning_content": "two cities, two calls",
                            "tool_calls": [call("get_weather", {"city": "北京"}),
                                           call("calc", '{"expr": "1+1"}', openai=False)]},
                        {"role": "tool", "content": "rain"}, {"role": "tool", "content": "2"},
                        {"role": "tool", "content": "<|im_end|> stays text"},
                        {"role": "assistant", "content": "Rain, and 2."}, {"role": "user", "content": "ok"}], TOOLS),
    "tool_calls_without_tools": ([U, {"role": "assistant", "content": "x",
                                      "tool_calls": [call("calc", {"expr": "6*7"})]},
                                  {"role": "tool", "content": "42"}], None),
    "user_writes_tool_response": ([{"role": "user", "content": "<tool_response>\nhi\n</tool_response>"}], None),
}
# the generation-prompt switches: each template's own (minimind-3: open_thinking; MiniMind2: enable_thinking)
SWITCHES = {"minimind2": [{}, {"enable_thinking": False}, {"enable_thinking": True}],
            "minimind3": [{}, {"open_thinking": True}, {"open_thinking": False}, {"enable_thinking": False}]}


@pytest.fixture(scope="module")
def fixtures():
    return {g: MiniMindTokenizer.from_pretrained(MINIMIND / g) for g in GENERATIONS}


@pytest.mark.parametrize("generation", GENERATIONS)
def test_fixture_loads_unchanged_with_its_template(fixtures, generation):
    tok, config = fixtures[generation], fixture_config(generation)
    assert tok.template == generation == detect_template(config["chat_template"])
    assert tok.chat_template == config["chat_template"] == CHAT_TEMPLATES[generation]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for i, entry in config["added_tokens_decoder"].items():
        assert tok.token_to_id(entry["content"]) == int(i)


def test_minimind3_tags_are_single_added_tokens(fixtures):
    tok = fixtures["minimind3"]
    assert (tok.think_start_id, tok.think_end_id, tok.token_to_id("<tool_call>")) == (25, 26, 21)
    for tag in ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"):
        assert tok.encode(tag) == [tok.token_to_id(tag)]
    ids = tok.encode("<|im_start|>assistant\n<think>\nhm\n</think>\n\n<tool_call>x</tool_call><|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(25) == ids.count(26) == ids.count(21) == 1
    # <think> and <tool_call> are not special: skipping special tokens keeps them, drops <|im_start|>
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nhm\n</think>\n\n<tool_call>x</tool_call>"


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_native_rendering_equals_the_fixtures_jinja(fixtures, generation, case):
    tok, jinja = fixtures[generation], fixture_config(generation)["chat_template"]
    messages, tools = CASES[case]
    for gen in (False, True):
        for switch in SWITCHES[generation]:
            expected = jinja_render(jinja, messages, tools=tools, add_generation_prompt=gen, **switch)
            assert tok.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, **switch) == expected
            assert render_chat(messages, gen, template=generation, tools=tools, **switch) == expected


def test_minimind3_generation_prompt_and_think_blocks(fixtures):
    tok = fixtures["minimind3"]
    plain = CASES["plain"][0]
    closed = tok.apply_chat_template(plain[:1], add_generation_prompt=True)
    assert closed.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    opened = tok.apply_chat_template(plain[:1], add_generation_prompt=True, open_thinking=True)
    assert opened.endswith("<|im_start|>assistant\n<think>\n")
    # enable_thinking=True (what chat and serve pass) asks for the same open block
    assert tok.apply_chat_template(plain[:1], add_generation_prompt=True, enable_thinking=True) == opened
    text = tok.apply_chat_template(CASES["reasoning"][0])
    assert "<|im_start|>assistant\n<think>\n2 plus 5 is 7.\n</think>\n\n7.<|im_end|>" in text
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\nYou're welcome.<|im_end|>" in text


def test_minimind3_tool_turns(fixtures):
    tok = fixtures["minimind3"]
    messages, tools = CASES["parallel_tools"]
    text = tok.apply_chat_template(messages, tools=tools)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert json.dumps(WEATHER, ensure_ascii=False) in text
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "calc", "arguments": {"expr": "1+1"}}\n</tool_call><|im_end|>') in text
    # three tool messages in a row: one user turn
    assert ("<|im_start|>user\n<tool_response>\nrain\n</tool_response>\n<tool_response>\n2\n</tool_response>\n"
            "<tool_response>\n<|im_end|> stays text\n</tool_response><|im_end|>\n") in text


@pytest.mark.parametrize("generation", GENERATIONS)
def test_sft_mask_covers_only_what_the_assistant_writes(fixtures, generation):
    tok = fixtures[generation]
    for case, (messages, tools) in CASES.items():
        text, spans = tok.render_chat_spans(messages, tools=tools)
        assert text == tok.apply_chat_template(messages, tools=tools)
        assistants = [m for m in messages if m["role"] == "assistant"]
        assert len(spans) == len(assistants), case
        for start, end in spans:
            assert text[:start].endswith("<|im_start|>assistant\n") and text[start:end].endswith("<|im_end|>")
            assert "<tool_response>" not in text[start:end] and "<|im_start|>" not in text[start:end]
        ids, offsets = tok.encode_with_offsets(text)
        labels = _mask(ids, offsets, spans)
        learned = tok.decode([t for t in labels if t != IGNORE_INDEX])
        assert learned == "".join(text[s:e] for s, e in spans), case
    text, spans = fixtures["minimind3"].render_chat_spans(*CASES["tools"])
    learned = [text[s:e] for s, e in spans]
    assert learned[0] == ('<think>\n\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
                          '{"city": "北京"}}\n</tool_call><|im_end|>')
    assert learned[1] == "<think>\n\n</think>\n\n北京今天晴，21度。<|im_end|>"


def test_control_tokens_in_messages_stay_text(fixtures):
    tok = fixtures["minimind3"]
    messages, tools = CASES["parallel_tools"]
    ids = tok.apply_chat_template(messages, tools=tools, tokenize=True)
    text = tok.apply_chat_template(messages, tools=tools)
    assert tok.decode(ids) == text
    assert ids.count(tok.eos_token_id) == text.count("<|im_end|>") - 1  # the tool's "<|im_end|>" is text
    plain, tools = CASES["tools"]
    assert tok.apply_chat_template(plain, tools=tools, tokenize=True) == tok.encode(
        tok.apply_chat_template(plain, tools=tools))


def _strings() -> list[str]:
    """A few hundred strings: Chinese, English, code, special and added tokens, odd whitespace, emoji."""
    pieces = ["北京今天天气怎么样？", "中国古代的四大发明是造纸术、指南针、火药和印刷术。",
              "你是minimind，一个小巧的语言模型。",
              "The quick brown fox jumps over the lazy dog.", "naïve café 🙂", "It's 3.14159, isn't it?",
              "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) { sum += x[i]; }",
              '{"name": "get_weather", "arguments": {"city": "北京"}}', "  leading spaces", "tab\tnew\nline\r\n",
              "1234567890", "https://github.com/jingyaogong/minimind", "x" * 50, "\u3000全角空格\u3000", "ＡＢＣ１２３",
              "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
              "<tool_response>", "</tool_response>", "<|object_ref_start|>", "<|vision_pad|>", "<tts_pad>",
              "<|buffer3|>", "<thin", "k>", "<|im_", "end|>", " ", "\n\n", "数学：∑ x² = 1", "日本語とEnglish混合"]
    rng = random.Random(0)
    strings = list(pieces)
    while len(strings) < 400:
        strings.append("".join(rng.choice(pieces) for _ in range(rng.randint(2, 4))))
    return strings


@pytest.mark.parametrize("generation", GENERATIONS)
def test_ids_equal_transformers(fixtures, generation):
    tok = fixtures[generation]
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(MINIMIND / generation / "tokenizer.json"))
    strings = _strings()
    assert len(strings) >= 300
    for s in strings:
        assert tok.encode(s) == list(hf.encode(s, add_special_tokens=False)), s
        assert tok.decode(tok.encode(s)) == s


@pytest.mark.parametrize("generation", GENERATIONS)
def test_save_and_load_keep_the_template(fixtures, generation, tmp_path):
    tok = fixtures[generation]
    tok.save_pretrained(tmp_path)
    again = MiniMindTokenizer.from_pretrained(tmp_path)
    assert again.template == generation
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template
    assert again.encode("<|im_start|>user\n<think>你好</think><|im_end|>") == tok.encode(
        "<|im_start|>user\n<think>你好</think><|im_end|>")
    messages, tools = CASES["parallel_tools"]
    assert again.apply_chat_template(messages, tools=tools) == tok.apply_chat_template(messages, tools=tools)
    # transformers reads the saved folder to the same ids and the same text
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    assert hf.apply_chat_template(messages, tools=tools, tokenize=False) == tok.apply_chat_template(
        messages, tools=tools)


def test_template_override_and_unknown_templates(tmp_path):
    tok = MiniMindTokenizer.from_pretrained(MINIMIND / "minimind3", template="minimind")
    assert tok.template == "minimind" and tok.apply_chat_template(CASES["plain"][0]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n")
    MiniMindTokenizer.from_pretrained(MINIMIND / "minimind3").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tokenizer_config.json: its chat_template is none of MiniMind's.*template="):
        MiniMindTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown chat template 'qwen'"):
        MiniMindTokenizer.from_pretrained(tmp_path, template="qwen")


def test_bad_messages_are_named(fixtures):
    course = MiniMindTokenizer(fixtures["minimind2"].tokenizer)  # the course template over MiniMind2's ids
    with pytest.raises(ValueError, match="has no tools"):
        course.apply_chat_template([U], tools=TOOLS)
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        course.apply_chat_template([U, {"role": "tool", "content": "x"}])
    tok = fixtures["minimind3"]
    with pytest.raises(ValueError, match="message 1: unknown role 'bot'"):
        tok.apply_chat_template([U, {"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match=r"message 1: tool_calls\[0\].*is not a tool call"):
        tok.apply_chat_template([U, {"role": "assistant", "content": "", "tool_calls": [{"name": "calc"}]}])


# a few hundred lines, English, Chinese, reasoning and tool calls, for the tokenizers trained here
LINES = [f"Mira the baker lives in Tallow and likes {food}. {a} plus {b} is {a + b}."
         for food in ("apples", "bread", "soup", "honey", "plums") for a in range(6) for b in range(8)]
LINES += ["你好，我是一个小模型。今天天气很好。", "<think>Let me add the numbers.</think> The answer is 7.",
          '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'] * 20


def added_tokens(tok) -> dict:
    return {i: (a.content, a.special) for i, a in tok.tokenizer.get_added_tokens_decoder().items()}


def test_trained_minimind3_tokenizer_matches_minimind3(fixtures, tmp_path):
    ours, theirs = train_tokenizer(LINES, vocab_size=500, template="minimind3"), fixtures["minimind3"]
    assert ours.template == "minimind3" and ours.vocab_size <= 500
    assert added_tokens(ours) == added_tokens(theirs) and len(added_tokens(ours)) == 36
    assert ours.token_to_id("<tool_call>") == theirs.token_to_id("<tool_call>") == 21
    assert ours.encode("<think>") == theirs.encode("<think>") == [25]
    jinja = fixture_config("minimind3")["chat_template"]
    for case, (messages, tools) in CASES.items():
        for switch in ({}, {"open_thinking": True}):
            text = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=True, **switch)
            assert text == theirs.apply_chat_template(messages, tools=tools, add_generation_prompt=True, **switch)
            assert text == jinja_render(jinja, messages, tools=tools, add_generation_prompt=True, **switch), case
    ours.save_pretrained(tmp_path)
    assert MiniMindTokenizer.from_pretrained(tmp_path).template == "minimind3"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == jinja
    for key in ("added_tokens_decoder", "additional_special_tokens", "bos_token", "eos_token", "pad_token"):
        assert config[key] == fixture_config("minimind3")[key]


def test_course_template_stays_the_default():
    tok = train_tokenizer(LINES, vocab_size=400)
    assert tok.template == "minimind" and tok.vocab_size == 400
    assert [tok.id_to_token(i) for i in range(5)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>",
                                                      "</think>"]
    with pytest.raises(ValueError, match="template='minimind2'.*use one of minimind, minimind3"):
        train_tokenizer(LINES, template="minimind2")
    with pytest.raises(ValueError, match="vocab_size=200 is too small.*292"):
        train_tokenizer(LINES, vocab_size=200, template="minimind3")


def test_cli_trains_a_minimind3_tokenizer(tmp_path, capsys):
    data = tmp_path / "lines.txt"
    data.write_text("\n\n".join(LINES), encoding="utf-8")
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "400", "--out", str(tmp_path / "tok"),
                 "--template", "minimind3"]) == 0
    tok = MiniMindTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.template == "minimind3" and tok.token_to_id("<tool_call>") == 21
    assert "trained a vocabulary" in capsys.readouterr().out


@pytest.mark.parametrize("generation", ["minimind2", "minimind3"])
def test_sft_dataset_renders_in_the_tokenizers_own_template(fixtures, generation):
    from minimind.data.datasets import SFTDataset
    tok = fixtures[generation]
    chat = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    data = SFTDataset([{"conversations": chat}], tok, max_len=64)
    ids, labels = data[0]["input_ids"].tolist(), data[0]["labels"].tolist()
    assert tok.decode(ids) == render_chat(chat, template=generation)  # MiniMind's format, as MiniMind trains it
    learned = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert learned == ("<think>\n\n</think>\n\n2<|im_end|>" if generation == "minimind3" else "2<|im_end|>")
