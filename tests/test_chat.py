"""Chat: streamed decoding across multi-byte characters, <think> splitting, stop strings, history, the
terminal loop and the notebook widget."""
import random

import pytest
import torch
from tiny_checkpoint import ScriptedModel, make_checkpoint, make_tokenizer

from minimind.cli import main as cli
from minimind.model import load_checkpoint
from minimind.use.chat import ChatSession, StopChecker, StreamDecoder, ThinkSplitter, fit_prompt, terminal_chat


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
    pytest.importorskip("ipywidgets")
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
