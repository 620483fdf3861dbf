"""Chat: streamed decoding across multi-byte characters, <think> splitting, stop strings, history, the
terminal loop, the notebook widget, and tool calls (episodes of model turns and tool results)."""
import random

import pytest
import torch
from tiny_checkpoint import LINES, ScriptedModel, make_checkpoint, make_tokenizer

from minimind.cli import build_parser
from minimind.cli import main as cli
from minimind.data.tokenizer import train_tokenizer
from minimind.model import load_checkpoint
from minimind.model.tools import course_tools, toolbox
from minimind.use.chat import (
    DIM,
    RESET,
    ChatSession,
    StopChecker,
    StreamDecoder,
    ThinkSplitter,
    fit_prompt,
    terminal_chat,
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt")


def test_stream_decoder_never_cuts_a_character(tok):
    text = "你好，世界！天气很好 🙂 é and plain words 12 + 3"
    ids = tok.encode(text)
    # the test means something only if some character spans several tokens
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_decoder_releases_invalid_bytes(tok):
    lone = [i for i in range(tok.vocab_size) if tok.decode([i]) == "\ufffd"][:2]
    dec = StreamDecoder(tok)
    out = "".join(dec.push(i) for i in lone + tok.encode(" ok")) + dec.flush()
    assert out.endswith(" ok") and "\ufffd" in out  # shown, not lost, and the stream goes on


THINK_REPLY = "<think>\nFirst add 3 and 4.\n</think>\n\nThe answer is 7."


@pytest.mark.parametrize("seed", range(5))
def test_think_splitter_any_chunking(seed):
    rng = random.Random(seed)
    s, cuts = ThinkSplitter(), sorted(rng.sample(range(1, len(THINK_REPLY)), rng.randint(1, 20)))
    chunks = [THINK_REPLY[a:b] for a, b in zip([0] + cuts, cuts + [len(THINK_REPLY)])]
    events = [e for c in chunks for e in s.push(c)] + s.flush()
    reasoning = "".join(t for k, t in events if k == "reasoning")
    content = "".join(t for k, t in events if k == "content")
    assert reasoning.strip() == "First add 3 and 4." and content == "The answer is 7."
    assert "<" not in reasoning + content
    assert s.reasoning_text == "First add 3 and 4." and s.content_text == "The answer is 7."


def test_think_splitter_opened_by_prompt_and_stray_close():
    s = ThinkSplitter(in_think=True)  # the prompt ended with <think>\n
    events = s.push("\nweighing it</th") + s.push("ink>\n\nyes") + s.flush()
    assert events == [("reasoning", "weighing it"), ("content", "yes")]
    s = ThinkSplitter()
    assert s.push("no tags </think>here") + s.flush() == [("content", "no tags here")]
    s = ThinkSplitter()
    assert s.push("a <thin") == [("content", "a ")]  # held back: might be a tag
    assert s.push("g> b") + s.flush() == [("content", "<thing> b")]


def test_stop_checker_across_chunks():
    s = StopChecker(["END", "\n\n"])
    assert s.push("hello E") == "hello "  # "E" might start END
    assert s.push("ND and more") == ""
    assert s.stopped and s.push("more") == "" and s.flush() == ""
    s = StopChecker(["END"])
    assert s.push("a EN") == "a " and s.push("TER") == "ENTER" and not s.stopped


def test_session_history_template_and_reasoning(tok):
    model = ScriptedModel(tok, THINK_REPLY)
    chat = ChatSession(model, tok, system="Be brief.", temperature=0.0, max_new_tokens=100)
    events = list(chat.stream("What is 3 plus 4?"))
    assert {k for k, _ in events} == {"reasoning", "content"}
    assert chat.last.content == "The answer is 7." and chat.last.reasoning == "First add 3 and 4."
    assert chat.last.completion_tokens == len(tok.encode(THINK_REPLY)) + 1 and chat.last.finish_reason == "stop"
    assert chat.history[-1] == {"role": "assistant", "content": "The answer is 7.",
                                "reasoning_content": "First add 3 and 4."}
    chat.ask("And 5 plus 5?")
    second = model.calls[-1]["prompt"]
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 plus 4?"},
         {"role": "assistant", "content": "The answer is 7.", "reasoning_content": "First add 3 and 4."},
         {"role": "user", "content": "And 5 plus 5?"}], add_generation_prompt=True, tokenize=True)
    assert second == expected
    assert model.calls[-1]["do_sample"] is False
    chat.reset()
    chat.ask("hi")
    assert model.calls[-1]["prompt"] == tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True, tokenize=True)


def test_session_sampling_options_and_max_tokens(tok):
    model = ScriptedModel(tok, "one two three four five six seven")
    chat = ChatSession(model, tok, temperature=0.8, top_p=0.5, top_k=7, max_new_tokens=3)
    chat.ask("count")
    call = model.calls[-1]
    assert call["do_sample"] and call["temperature"] == 0.8 and call["top_p"] == 0.5 and call["top_k"] == 7
    assert chat.last.completion_tokens == 3 and chat.last.finish_reason == "length"


def test_fit_prompt_drops_old_turns(tok):
    long = [{"role": "system", "content": "sys"}] + [
        {"role": r, "content": "Mira the baker likes apples. " * 4} for r in ["user", "assistant"] * 6]
    long.append({"role": "user", "content": "last question"})
    ids, dropped = fit_prompt(tok, long, context=200, reserve=20)
    assert dropped > 0 and len(ids) + 20 <= 200
    assert tok.decode(ids).startswith("<|im_start|>system\nsys<|im_end|>")
    assert "last question" in tok.decode(ids)
    with pytest.raises(ValueError, match="does not fit"):
        fit_prompt(tok, [{"role": "user", "content": "word " * 400}], context=200, reserve=20)


def test_real_model_greedy_chat_matches_generate(ckpt):
    model, tok = load_checkpoint(ckpt)
    chat = ChatSession(model, tok, temperature=0.0, max_new_tokens=20)
    reply = chat.ask("Who is Mira?")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Who is Mira?"}], add_generation_prompt=True,
                                     tokenize=True)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=20, eos_token_id=tok.eos_token_id)[0, len(prompt):]
    ids = out.tolist()
    ended = tok.eos_token_id in ids
    ids = ids[:ids.index(tok.eos_token_id)] if ended else ids
    splitter = ThinkSplitter()
    splitter.push(tok.decode(ids, skip_special_tokens=True))
    splitter.flush()
    assert reply == splitter.content_text
    assert chat.last.completion_tokens == len(ids) + ended
    assert chat.last.finish_reason == ("stop" if ended else "length")


def test_terminal_chat_commands(tok):
    model = ScriptedModel(tok, THINK_REPLY)
    lines = iter(["hello", "/think", "again", "/reset", "/exit"])
    printed = []
    session = terminal_chat(model, tok, input_fn=lambda _: next(lines),
                            print_fn=lambda *a, **k: printed.append(" ".join(map(str, a)) + k.get("end", "\n")),
                            color=False)
    out = "".join(printed)
    first, rest = out.split("(reasoning hidden)")
    assert "First add 3 and 4." in first and "The answer is 7." in first
    assert "First add 3 and 4." not in rest and "The answer is 7." in rest
    assert "(conversation reset)" in out and session.history == []
    assert len(model.calls) == 2
    # the second turn saw the first one
    assert len(model.calls[1]["prompt"]) > len(model.calls[0]["prompt"])


def test_cli_chat(ckpt, monkeypatch, capsys):
    lines = iter(["Hello", "/reset", "Hi again"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None
    monkeypatch.setattr("builtins.input", fake_input)
    assert cli(["chat", str(ckpt), "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "MiniMind chat" in out and "(conversation reset)" in out


def test_widget_streams_into_transcript(tok):
    from minimind.use.chat import chat_widget
    model = ScriptedModel(tok, THINK_REPLY)
    w = chat_widget(model, tok)
    w.temperature.value, w.top_p.value = 0.3, 0.6
    seen = []
    w.transcript.observe(lambda ch: seen.append(ch["new"]), names="value")
    w.text.value = "What is 3 plus 4?"  # typing + Enter submits
    assert w.text.value == ""
    assert "The answer is 7." in w.transcript.value and "First add 3 and 4." in w.transcript.value
    assert len(seen) > 3  # the transcript was updated while the reply streamed
    call = model.calls[-1]
    assert call["temperature"] == 0.3 and call["top_p"] == 0.6
    assert "tokens/s" in w.status.value
    w.show_thinking.value = False
    w.submit("again")
    assert w.transcript.value.count("First add 3 and 4.") == 1  # hidden for the new reply
    w.reset()
    assert w.transcript.value == "" and w.session.history == []


# -- tools -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tool_tok():
    return train_tokenizer(LINES, vocab_size=400, template="minimind3")  # as tests/test_tools.py


class ScriptedTurns(ScriptedModel):
    """A ScriptedModel whose n-th generation writes the n-th reply (the last one again after that)."""

    def __init__(self, tokenizer, *replies, context: int = 4096):
        super().__init__(tokenizer, replies[0], context=context)
        self.replies = [tokenizer.encode(r) for r in replies]

    def stream_generate(self, input_ids, max_new_tokens=64, **kwargs):
        self.reply_ids = self.replies[min(len(self.calls), len(self.replies) - 1)]
        yield from super().stream_generate(input_ids, max_new_tokens, **kwargs)


REGISTER = {"Zorin": {"age": 41, "house": 12, "weight": 60, "shoe": 40}}
RESULT = '{"house": 12}'
LOOKUP = '<tool_call>\n{"name": "lookup", "arguments": {"name": "Zorin", "fact": "house"}}\n</tool_call>'
BROKEN = '<tool_call>\n{"name": "lookup", "arguments": {"name": }\n</tool_call>'


def test_tool_episode_runs_the_call_and_feeds_the_result_back(tool_tok):
    box = course_tools(REGISTER)
    model = ScriptedTurns(tool_tok, "Let me check.\n" + LOOKUP, "Zorin lives at number 12.")
    chat = ChatSession(model, tool_tok, tools=box, temperature=0.0, max_new_tokens=100)
    events = list(chat.stream("Where is Zorin's house?"))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "content" and kinds.count("tool") == 1
    call, result = events[kinds.index("tool")][1]
    assert (call.name, call.arguments, result) == ("lookup", {"name": "Zorin", "fact": "house"}, RESULT)
    before = "".join(t for k, t in events[:kinds.index("tool")])
    after = "".join(t for k, t in events[kinds.index("tool") + 1:])
    assert before == "Let me check." and after == "Zorin lives at number 12."  # the call's JSON is not shown as text
    assert chat.history == [
        {"role": "user", "content": "Where is Zorin's house?"},
        {"role": "assistant", "content": "Let me check.",
         "tool_calls": [{"name": "lookup", "arguments": {"name": "Zorin", "fact": "house"}}]},
        {"role": "tool", "content": RESULT},
        {"role": "assistant", "content": "Zorin lives at number 12."}]
    assert chat.last.content == "Zorin lives at number 12." and [r for _, r in chat.last.tool_results] == [RESULT]
    assert chat.last.completion_tokens == sum(len(r) + 1 for r in model.replies) and not chat.last.out_of_tool_turns
    # both prompts show the tools; the second is the first turn, the call and its result, rendered by the template
    first, second = (tool_tok.decode(c["prompt"]) for c in model.calls)
    assert '"name": "lookup"' in first and "<tools>" in first and RESULT not in first
    assert model.calls[1]["prompt"] == tool_tok.apply_chat_template(chat.history[:3], add_generation_prompt=True,
                                                                    tokenize=True, tools=box.schemas())
    assert f"<tool_response>\n{RESULT}\n</tool_response>" in second
    chat.ask("And his pet?")  # the next message sees the whole episode
    assert model.calls[2]["prompt"] == tool_tok.apply_chat_template(
        chat.history[:5], add_generation_prompt=True, tokenize=True, tools=box.schemas())
    chat.reset()
    assert chat.history == [] and chat.last is None


def test_a_broken_call_is_answered_with_an_error_and_another_turn(tool_tok):
    model = ScriptedTurns(tool_tok, BROKEN, "I could not look it up.")
    chat = ChatSession(model, tool_tok, tools=course_tools(REGISTER), temperature=0.0, max_new_tokens=100)
    events = list(chat.stream("Where is Zorin's house?"))
    tools = [p for k, p in events if k == "tool"]
    assert len(tools) == 1 and tools[0][0] is None and tools[0][1].startswith("error: the tool call is not valid")
    assert [m["role"] for m in chat.history] == ["user", "assistant", "tool", "assistant"]
    assert chat.history[1] == {"role": "assistant", "content": BROKEN}  # what it wrote, no tool_calls
    assert chat.history[2] == {"role": "tool", "content": tools[0][1]}
    assert "<tool_response>\nerror: the tool call is not valid JSON" in tool_tok.decode(model.calls[1]["prompt"])
    assert len(model.calls) == 2 and chat.last.content == "I could not look it up."


def test_a_model_that_keeps_calling_runs_out_of_turns(tool_tok):
    model = ScriptedTurns(tool_tok, LOOKUP)  # calls, every turn
    chat = ChatSession(model, tool_tok, tools=course_tools(REGISTER), max_tool_turns=3, temperature=0.0)
    assert chat.ask("Where is Zorin's house?") == ""
    assert len(model.calls) == 3 and chat.last.out_of_tool_turns
    assert [m["role"] for m in chat.history] == ["user"] + ["assistant", "tool"] * 3
    with pytest.raises(ValueError, match="at least one turn"):
        ChatSession(model, tool_tok, tools=course_tools(REGISTER), max_tool_turns=0)


def test_terminal_chat_prints_calls_and_says_when_turns_run_out(tool_tok):
    model = ScriptedTurns(tool_tok, LOOKUP, "Zorin lives at number 12.", LOOKUP)
    lines = iter(["Where is Zorin's house?", "Again?", "/reset", "/exit"])
    printed = []
    session = terminal_chat(model, tool_tok, input_fn=lambda _: next(lines), color=True,
                            print_fn=lambda *a, **k: printed.append(" ".join(map(str, a)) + k.get("end", "\n")),
                            tools=course_tools(REGISTER), max_tool_turns=2, temperature=0.0)
    out = "".join(printed)
    assert "Tools: add, subtract, lookup." in out
    assert DIM + f'[lookup(name="Zorin", fact="house") -> {RESULT}]' + RESET + "\nZorin lives at number 12.\n" in out
    assert "<tool_call>" not in out
    assert out.count("(no answer: the model was still calling tools after 2 turns)") == 1
    assert "(conversation reset)" in out and session.history == [] and len(model.calls) == 4


def test_the_course_template_is_refused_with_the_fix(tok):
    model = ScriptedModel(tok, "hello")
    with pytest.raises(ValueError, match=r"template \('minimind'.*minimind3 template \(e.g. chapter 14's"):
        ChatSession(model, tok, tools=toolbox("calculator"))
    chat = ChatSession(model, tok, tools=toolbox("none"))  # no tools: the course model chats as before
    assert chat.tools is None and chat.ask("hi") == "hello"
    assert model.calls[-1]["prompt"] == tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                add_generation_prompt=True, tokenize=True)


def test_fit_prompt_keeps_the_episode_and_drops_results_with_their_call(tool_tok):
    call = {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}
    old = [{"role": "user", "content": "Mira the baker likes apples. " * 4}, call, {"role": "tool", "content": "3"},
           {"role": "assistant", "content": "It is 3."}]
    now = [{"role": "user", "content": "And 2 plus 2?"}]

    def size(msgs):
        return len(tool_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    # room for the old tool result, the old answer and the question: the orphaned result goes too
    ids, dropped = fit_prompt(tool_tok, old + now, context=size(old[2:] + now) + 10, reserve=10)
    assert dropped == 3 and ids == tool_tok.apply_chat_template(old[3:] + now, add_generation_prompt=True,
                                                                tokenize=True)
    episode = now + [call, {"role": "tool", "content": "4"}]
    with pytest.raises(ValueError, match="does not fit"):  # the episode's own messages never go
        fit_prompt(tool_tok, episode, context=size(episode) + 5, reserve=10, keep=3)
    assert fit_prompt(tool_tok, episode, context=size(episode) + 5, reserve=10)[1] > 0  # keep=1 drops them


def test_cli_chat_tools_flag(ckpt, tmp_path, tool_tok, monkeypatch, capsys):
    assert build_parser().parse_args(["chat", "x"]).tools == "none"
    assert build_parser().parse_args(["chat", "x", "--tools", "course:reg.json"]).tools == "course:reg.json"
    # the course checkpoint's template cannot show tools: a clear error, not a traceback
    assert cli(["chat", str(ckpt), "--tools", "calculator", "--device", "cpu"]) == 2
    assert "minimind3 template" in capsys.readouterr().err
    assert cli(["chat", str(ckpt), "--tools", "abacus", "--device", "cpu"]) == 2
    assert "unknown toolbox 'abacus'" in capsys.readouterr().err
    # a minimind3 checkpoint chats with the calculator
    from minimind import MiniMindConfig, MiniMindForCausalLM
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(vocab_size=tool_tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                               max_position_embeddings=2048))
    folder = model.save_pretrained(tmp_path / "tools_ckpt", tokenizer=tool_tok)
    lines = iter(["What is 2 plus 3?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert cli(["chat", str(folder), "--tools", "calculator", "--max-new-tokens", "4", "--temperature", "0",
                "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Tools: add, subtract, multiply, divide." in out and "(error" not in out
