"""Tool calls: parsing what the model writes (never raising), and the server's OpenAI tool protocol, checked with
the official `openai` client against a model whose reply is scripted."""
import contextlib
import json

import openai
import pytest
from tiny_checkpoint import LINES, ScriptedModel

from minimind.data.tokenizer import train_tokenizer
from minimind.data.tools import ToolCallSplitter, parse_tool_calls
from minimind.use.serve import running_server

WEATHER = {"type": "function", "function": {"name": "weather", "description": "the weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "description": "a + b",
                                        "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                                                        "b": {"type": "number"}}}}}
CALL_REPLY = ('Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}\n</tool_call>')


# -- parsing ---------------------------------------------------------------------------------------------------
def test_calls_are_parsed_and_the_text_around_them_kept():
    content, calls, problems = parse_tool_calls(CALL_REPLY)
    assert content == "Let me look."
    assert [(c.name, c.arguments) for c in calls] == [("weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})]
    assert problems == [] and calls[0].id != calls[1].id
    assert json.loads(calls[1].openai()["function"]["arguments"]) == {"a": 2, "b": 3}  # OpenAI: a JSON string


@pytest.mark.parametrize("bad, why", [
    ('<tool_call>\n{"name": "weather", "arguments": {"city": }\n</tool_call>', "not valid JSON"),
    ('<tool_call>\n{"arguments": {}}\n</tool_call>', '"name"'),
    ('<tool_call>\n{"name": "add", "arguments": [1, 2]}\n</tool_call>', "must be a JSON object"),
    ('<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}', "never closed"),
])
def test_what_is_not_a_call_stays_text_with_its_reason(bad, why):
    content, calls, problems = parse_tool_calls("ok " + bad)
    assert calls == [] and content == "ok " + bad  # nothing lost, nothing raised
    assert len(problems) == 1 and why in problems[0]


def test_streamed_pieces_split_like_the_whole_text():
    for size in (1, 2, 3, 7, 50):
        splitter, parts = ToolCallSplitter(), []
        for i in range(0, len(CALL_REPLY), size):  # tags cut anywhere across pieces
            parts += splitter.push(CALL_REPLY[i:i + size])
        parts += splitter.flush()
        assert "".join(p for k, p in parts if k == "content") == "Let me look."
        assert [p.name for k, p in parts if k == "call"] == ["weather", "add"]


# -- the server ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tool_tok():
    return train_tokenizer(LINES, vocab_size=400, template="minimind3")


@contextlib.contextmanager
def serving(reply, tok):
    model = ScriptedModel(tok, reply, context=4096)
    with running_server(model, tok, model_name="mini") as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60), model


def test_tool_calls_come_back_as_openai_tool_calls(tool_tok):
    with serving(CALL_REPLY, tool_tok) as (client, model):
        r = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "Paris weather?"}],
                                           tools=[WEATHER, ADD])
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me look."
        calls = choice.message.tool_calls
        assert [c.function.name for c in calls] == ["weather", "add"]
        assert json.loads(calls[0].function.arguments) == {"city": "Paris"} and calls[0].type == "function"
        prompt = tool_tok.decode(model.calls[-1]["prompt"])
        assert "<tools>" in prompt and '"name": "weather"' in prompt  # the tools block in the system turn

        # streamed: the same calls arrive as delta.tool_calls, the text as delta.content
        stream = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "Paris?"}],
                                                tools=[WEATHER, ADD], stream=True)
        text, names, args, finish = "", {}, {}, None
        for chunk in stream:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            for tc in delta.tool_calls or []:
                names[tc.index] = tc.function.name
                args[tc.index] = json.loads(tc.function.arguments)
            finish = chunk.choices[0].finish_reason or finish
        assert text == "Let me look." and names == {0: "weather", 1: "add"}
        assert args[1] == {"a": 2, "b": 3} and finish == "tool_calls"


def test_a_full_tool_round_trip(tool_tok):
    with serving("It is 21 degrees in Paris.", tool_tok) as (client, model):
        messages = [{"role": "user", "content": "Paris weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'}]
        r = client.chat.completions.create(model="mini", messages=messages, tools=[WEATHER])
        assert r.choices[0].message.content == "It is 21 degrees in Paris."
        assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
        prompt = tool_tok.decode(model.calls[-1]["prompt"])
        # the call as the model wrote it, the result in a user turn, as minimind-3's template renders them
        assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
        assert '<|im_start|>user\n<tool_response>\n{"celsius": 21}\n</tool_response><|im_end|>' in prompt


def test_tool_choice_forces_a_call_by_its_prompt(tool_tok):
    with serving('{"city": "Oslo"}}\n</tool_call>', tool_tok) as (client, model):
        r = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER, ADD],
                                           tool_choice={"type": "function", "function": {"name": "weather"}})
        calls = r.choices[0].message.tool_calls
        assert [c.function.name for c in calls] == ["weather"] and json.loads(calls[0].function.arguments) == {
            "city": "Oslo"}
        assert tool_tok.decode(model.calls[-1]["prompt"]).endswith('<tool_call>\n{"name": "weather", "arguments": ')
        r = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER], tool_choice="none")
        assert "<tools>" not in tool_tok.decode(model.calls[-1]["prompt"])  # none: the model is not shown tools
        with pytest.raises(openai.BadRequestError, match="not in 'tools'"):
            client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER], tool_choice={"type": "function",
                                                                         "function": {"name": "nope"}})


def test_bad_call_text_is_returned_as_text(tool_tok):
    bad = '<tool_call>\n{"name": "weather", "arguments": {"city": }\n</tool_call>'
    with serving(bad, tool_tok) as (client, _):
        r = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER])
        assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
        assert r.choices[0].message.content == bad


def test_the_course_template_refuses_tools_by_name():
    tok = train_tokenizer(LINES, vocab_size=400)  # the course's template: no tools
    with serving("hello", tok) as (client, _):
        with pytest.raises(openai.BadRequestError, match="has no tools"):
            client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER])


# -- running tools and episodes --------------------------------------------------------------------------------
def toolbox(timeout=5.0):
    import time

    from minimind.model.tools import Tool, ToolBox

    def slow(seconds: float):
        time.sleep(seconds)
        return "done"

    return ToolBox([Tool("add", "a + b", ADD["function"]["parameters"], lambda a, b: a + b),
                    Tool("fail", "raises", {"type": "object", "properties": {}}, lambda: 1 / 0),
                    Tool("slow", "sleeps", {"type": "object", "properties": {"seconds": {"type": "number"}}}, slow)],
                   timeout=timeout)


def test_only_registered_tools_run_and_every_failure_is_a_message():
    from minimind.data.tools import ToolCall
    box = toolbox(timeout=0.2)
    assert box.run(ToolCall("add", {"a": 2, "b": 3.5})) == "5.5"
    assert box.run(ToolCall("os.system", {"cmd": "ls"})).startswith("error: there is no tool 'os.system'")
    assert "unknown argument(s) c" in box.run(ToolCall("add", {"a": 1, "b": 2, "c": 3}))
    assert "should be a number" in box.run(ToolCall("add", {"a": "1", "b": 2}))
    assert "ZeroDivisionError" in box.run(ToolCall("fail", {}))
    assert "longer than 0.2 s" in box.run(ToolCall("slow", {"seconds": 2}))
    assert [t["function"]["name"] for t in box.schemas()] == ["add", "fail", "slow"]


def scripted(*replies):
    seen = []

    def generate(messages):
        seen.append([dict(m) for m in messages])
        return replies[len(seen) - 1]
    return generate, seen


def play(generate, messages, max_turns=4):
    """An episode the way chat plays one: the whole conversation to the model each turn, its text parsed."""
    from minimind.model.tools import Episode, tool_turns
    episode = Episode(list(messages))
    for _ in tool_turns([episode], max_turns):
        episode.model_turn(toolbox(), *parse_tool_calls(generate(episode.messages)))
    return episode


def test_an_episode_runs_the_calls_and_feeds_the_results_back():
    generate, seen = scripted('<tool_call>\n{"name": "add", "arguments": {"a": 17, "b": 25}}\n</tool_call>',
                              "17 plus 25 is 42.")
    ep = play(generate, [{"role": "user", "content": "17 + 25?"}])
    assert ep.ended == "answer" and ep.answer == "17 plus 25 is 42." and (ep.turns, ep.calls) == (2, 1)
    assert [(c.name, r) for c, r in ep.results] == [("add", "42")]
    assert seen[1][-1] == {"role": "tool", "content": "42"}  # the second turn saw the tool's result
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "tool", "assistant"]


def test_a_broken_call_gets_an_error_and_another_turn_then_the_turns_run_out():
    broken = '<tool_call>\n{"name": "add", "arguments": {"a": }\n</tool_call>'
    generate, seen = scripted(broken, "I give up: 42.")
    ep = play(generate, [{"role": "user", "content": "17 + 25?"}])
    assert ep.ended == "answer" and ep.answer == "I give up: 42." and (ep.calls, ep.broken) == (0, 1)
    assert seen[1][-1]["role"] == "tool" and "not valid JSON" in seen[1][-1]["content"]
    loop = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call>'
    generate, _ = scripted(loop, loop, loop)
    ep = play(generate, [{"role": "user", "content": "1 + 1?"}], max_turns=3)
    assert ep.ended == "max_turns" and len(ep.results) == 3 and ep.answer == ""


def test_each_broken_block_gets_its_error_and_a_final_turn_runs_nothing():
    """The agent stage's view: results as tool turns, one per call then one per broken block; its last turn
    (or one cut off) is the answer as written, its calls not run."""
    from minimind.model.tools import Episode
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call>'
    broken = '<tool_call>\n{"name": "add", "arguments": {"a": }\n</tool_call>'
    ep = Episode()
    ran = ep.model_turn(toolbox(), *parse_tool_calls(call + "\n" + broken + broken))
    assert ran[0][1] == "2" and [c for c, _ in ran[1:]] == [None, None]
    assert all(r.startswith("error: the tool call is not valid JSON") for _, r in ran[1:])
    assert [m["role"] for m in ep.messages] == ["assistant", "tool", "tool", "tool"] and (ep.calls, ep.broken) == (1, 2)
    assert ep.model_turn(toolbox(), *parse_tool_calls("So " + call), text="So " + call, final=True) == []
    assert ep.ended == "final" and ep.answer == "So" and ep.messages[-1] == {"role": "assistant",
                                                                          "content": "So " + call}
