"""`minimind data convert`: other formats in, MiniMind's JSONL out, exactly and valid by construction."""
import gzip
import json
import math

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minimind.cli import main
from minimind.data import sources
from minimind.data.convert import convert, detect_format
from minimind.data.records import DataError, check_file


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(tmp_path, records, kind_expected, name="in.jsonl", **kwargs):
    """Convert records written as JSONL; check the summary and that the output passes check_file."""
    src, out = write_jsonl(tmp_path / name, records), tmp_path / "out.jsonl"
    summary = convert(src, out, **kwargs)
    assert summary["kind"] == kind_expected
    assert summary["written"] == summary["records"] - summary["skipped"]
    checked = check_file(out, kind_expected)
    assert checked["records"] == summary["written"] and checked["bad"] == 0
    return read_jsonl(out), summary


def msg(role, content):
    return {"role": role, "content": content}


def test_alpaca_with_input_history_and_system(tmp_path):
    records = [
        {"instruction": "Translate to French", "input": "good morning", "output": "bonjour", "system": "Be brief.",
         "history": [["hi", "hello!"], ["who are you?", "a model"]]},
        {"instruction": "2+2?", "input": "", "output": "4"},
        {"instruction": "", "input": "only input", "output": "ok", "system": ""},
    ]
    got, summary = run(tmp_path, records, "sft")
    assert summary["format"] == "alpaca"
    assert got == [
        {"conversations": [msg("system", "Be brief."), msg("user", "hi"), msg("assistant", "hello!"),
                           msg("user", "who are you?"), msg("assistant", "a model"),
                           msg("user", "Translate to French\ngood morning"), msg("assistant", "bonjour")]},
        {"conversations": [msg("user", "2+2?"), msg("assistant", "4")]},
        {"conversations": [msg("user", "only input"), msg("assistant", "ok")]},
    ]


def test_alpaca_preference_becomes_dpo(tmp_path):
    records = [{"instruction": "Name a colour", "input": "of the sky", "chosen": "blue", "rejected": "loud",
                "system": "S"}]
    got, _ = run(tmp_path, records, "dpo")
    prompt = [msg("system", "S"), msg("user", "Name a colour\nof the sky")]
    assert got == [{"chosen": prompt + [msg("assistant", "blue")], "rejected": prompt + [msg("assistant", "loud")]}]


def test_sharegpt_roles_and_system(tmp_path):
    records = [
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                           {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"}],
         "system": "field system"},
        {"conversations": [{"from": "system", "value": "message system"}, {"from": "human", "value": "q"},
                           {"from": "gpt", "value": "a"}], "system": "ignored: the message's system wins"},
        {"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    got, summary = run(tmp_path, records, "sft")
    assert summary["format"] == "sharegpt"
    assert got == [
        {"conversations": [msg("system", "field system"), msg("user", "q1"), msg("assistant", "a1"),
                           msg("user", "q2"), msg("assistant", "a2")]},
        {"conversations": [msg("system", "message system"), msg("user", "q"), msg("assistant", "a")]},
        {"conversations": [msg("user", "q"), msg("assistant", "a")]},
    ]


WEATHER = {"name": "weather", "description": "the weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _learned(conversation) -> str:
    """The text minimind-3's template renders for a conversation, inside the spans the model learns."""
    from minimind.data.datasets import render_record
    text, spans = render_record(conversation, "minimind3")
    return "".join(text[a:b] for a, b in spans)


def test_llama_factory_tool_calls_convert_and_render_inside_the_learned_span(tmp_path):
    records = [{"conversations": [{"from": "human", "value": "Weather in Oslo and Rome?"},
                                  {"from": "function_call", "value": json.dumps(
                                      [{"name": "weather", "arguments": {"city": "Oslo"}},
                                       {"name": "weather", "arguments": {"city": "Rome"}}])},
                                  {"from": "observation", "value": "[\"rain\", \"sun\"]"},
                                  {"from": "gpt", "value": "Rain in Oslo, sun in Rome."}],
                "tools": json.dumps([WEATHER])},  # LLaMA-Factory: bare schemas, as a JSON string
               {"conversations": [{"from": "human", "value": "Oslo?"},
                                  {"from": "function_call", "value": '{"name": "weather", "arguments": '
                                                                     '"{\\"city\\": \\"Oslo\\"}"}'},
                                  {"from": "observation", "value": "rain"}, {"from": "gpt", "value": "Rain."}],
                "system": "Use the tools.", "tools": [WEATHER]}]
    got, summary = run(tmp_path, records, "sft")
    assert summary["format"] == "sharegpt"
    schema = [{"type": "function", "function": WEATHER}]
    assert got[0]["conversations"] == [
        {"role": "system", "content": "", "tools": schema}, msg("user", "Weather in Oslo and Rome?"),
        {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}},
                                                            {"name": "weather", "arguments": {"city": "Rome"}}]},
        msg("tool", '["rain", "sun"]'), msg("assistant", "Rain in Oslo, sun in Rome.")]
    assert got[1]["conversations"][0] == {"role": "system", "content": "Use the tools.", "tools": schema}
    assert got[1]["conversations"][2]["tool_calls"] == [{"name": "weather", "arguments": {"city": "Oslo"}}]
    learned = _learned(got[0]["conversations"])
    assert '"city": "Rome"' in learned and "Rain in Oslo" in learned and "rain" not in learned.replace("Rain", "")


def test_openai_tool_calls_results_and_reasoning_parts_convert(tmp_path):
    records = [
        {"messages": [msg("user", "Weather in Oslo?"),
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_1", "type": "function",
                           "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
                      msg("assistant", "Rain.")],
         "tools": [{"type": "function", "function": WEATHER}]},
        # the older function-calling API: function_call on the assistant, role "function" for the result
        {"messages": [msg("user", "Oslo?"),
                      {"role": "assistant", "content": None,
                       "function_call": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
                      {"role": "function", "name": "weather", "content": "rain"}, msg("assistant", "Rain.")]},
        # LLaMA-Factory's reasoning-with-tools messages: content parts of type reasoning and text
        {"messages": [msg("user", "Oslo?"),
                      {"role": "assistant", "content": [{"type": "reasoning", "reasoning": "I should look."}],
                       "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]},
                      msg("tool", "rain"),
                      {"role": "assistant", "content": [{"type": "reasoning", "reasoning": "It rains."},
                                                        {"type": "text", "text": "Rain."}]}],
         "tools": [WEATHER]},
    ]
    got, summary = run(tmp_path, records, "sft")
    assert summary["format"] == "openai"
    call = [{"name": "weather", "arguments": {"city": "Oslo"}}]
    assert got[0]["conversations"] == [
        {"role": "system", "content": "", "tools": [{"type": "function", "function": WEATHER}]},
        msg("user", "Weather in Oslo?"), {"role": "assistant", "content": "", "tool_calls": call},
        msg("tool", "rain"), msg("assistant", "Rain.")]
    assert got[1]["conversations"] == [msg("user", "Oslo?"), {"role": "assistant", "content": "", "tool_calls": call},
                                       msg("tool", "rain"), msg("assistant", "Rain.")]
    assert got[2]["conversations"][2] == {"role": "assistant", "content": "", "tool_calls": call,
                                          "reasoning_content": "I should look."}
    assert got[2]["conversations"][4] == {"role": "assistant", "content": "Rain.", "reasoning_content": "It rains."}
    for record in got:
        learned = _learned(record["conversations"])
        assert '"city": "Oslo"' in learned and "Rain." in learned


def test_bad_tool_calls_are_named_errors(tmp_path):
    cases = [({"conversations": [{"from": "human", "value": "q"},
                                 {"from": "function_call", "value": "{not json"}]}, "sharegpt",
              r"in\.jsonl:1: conversations\[1\] \"value\" is a string but not valid JSON"),
             ({"conversations": [{"from": "human", "value": "q"},
                                 {"from": "function_call", "value": '{"arguments": {}}'}]}, "sharegpt",
              r"in\.jsonl:1: conversations\[1\] \"value\" is not a tool call"),
             ({"messages": [msg("user", "q"), {"role": "assistant", "content": None, "tool_calls": [
                 {"type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}]}, "openai",
              r"messages\[1\] tool_calls\[0\] arguments is list, not an object"),
             ({"messages": [msg("user", "q"), msg("assistant", "a")], "tools": [{"description": "no name"}]},
              "openai", r'"tools"\[0\] is not a tool schema')]
    for record, fmt, pattern in cases:
        src = write_jsonl(tmp_path / "in.jsonl", [record])
        with pytest.raises(DataError, match=pattern):
            convert(src, tmp_path / "out.jsonl", fmt=fmt)


def test_a_converted_tool_file_trains_the_tool_sft_stage(tmp_path):
    from course_helpers import course

    from minimind.data.tokenizer import train_tokenizer
    from minimind.train import read_metrics, train_stage
    rows = [{"conversations": [{"from": "human", "value": f"Weather in {city}?"},
                               {"from": "function_call", "value": json.dumps({"name": "weather",
                                                                               "arguments": {"city": city}})},
                               {"from": "observation", "value": weather}, {"from": "gpt", "value": f"{weather}."}],
             "tools": json.dumps([WEATHER])} for city, weather in [("Oslo", "Rain"), ("Rome", "Sun")] * 8]
    src = write_jsonl(tmp_path / "glaive.jsonl", rows)
    convert(src, tmp_path / "tool_sft.jsonl")
    tok = train_tokenizer([line for line in open(course()["sft"])], vocab_size=400, template="minimind3")
    tok.save_pretrained(tmp_path / "tok")
    train_stage("sft", tmp_path / "run", data=tmp_path / "tool_sft.jsonl", tokenizer=tmp_path / "tok", max_steps=3,
                batch_size=4, seq_len=1024, device="cpu", progress=False, stage_kwargs=dict(shared_prefix=True))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)


def test_sharegpt_preference_becomes_dpo(tmp_path):
    records = [{"conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}]
    got, summary = run(tmp_path, records, "dpo")
    assert summary["format"] == "sharegpt"
    assert got == [{"chosen": [msg("user", "q"), msg("assistant", "good")],
                    "rejected": [msg("user", "q"), msg("assistant", "bad")]}]


def test_openai_messages_content_parts_and_roles(tmp_path):
    records = [
        {"messages": [{"role": "developer", "content": "sys"},
                      {"role": "user", "content": [{"type": "text", "text": "part one"},
                                                   {"type": "text", "text": "part two"}]},
                      {"role": "assistant", "content": "answer", "reasoning_content": "thinking"}]},
        {"messages": [msg("system", "s"), msg("user", "q"), msg("assistant", "a")]},
    ]
    got, summary = run(tmp_path, records, "sft")
    assert summary["format"] == "openai"
    assert got == [
        {"conversations": [msg("system", "sys"), msg("user", "part one\npart two"),
                           {"role": "assistant", "content": "answer", "reasoning_content": "thinking"}]},
        {"conversations": [msg("system", "s"), msg("user", "q"), msg("assistant", "a")]},
    ]


def test_openai_other_part_types_are_errors(tmp_path):
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          msg("assistant", "a")]}
    src = write_jsonl(tmp_path / "in.jsonl", [image])
    with pytest.raises(DataError, match=r"in\.jsonl:1: messages\[0\] content\[0\] is a 'image_url' part"):
        convert(src, tmp_path / "out.jsonl", fmt="openai")


def test_openai_preference_with_prompt(tmp_path):
    records = [{"prompt": [msg("user", "q")], "chosen": [msg("assistant", "good")],
                "rejected": [msg("assistant", "bad")]},
               {"prompt": "plain prompt", "chosen": "yes", "rejected": "no"}]
    got, summary = run(tmp_path, records, "dpo")
    assert summary["format"] == "openai"
    assert got == [{"chosen": [msg("user", "q"), msg("assistant", "good")],
                    "rejected": [msg("user", "q"), msg("assistant", "bad")]},
                   {"chosen": [msg("user", "plain prompt"), msg("assistant", "yes")],
                    "rejected": [msg("user", "plain prompt"), msg("assistant", "no")]}]


@pytest.mark.parametrize("records, kind", [
    ([{"conversations": [msg("user", "q"), msg("assistant", "a")]}], "sft"),
    ([{"chosen": [msg("user", "q"), msg("assistant", "a")], "rejected": [msg("user", "q"), msg("assistant", "b")]}],
     "dpo"),
    ([{"conversations": [msg("user", "q")], "answer": "42"}], "rl"),
    ([{"text": "A document."}], "pretrain"),
])
def test_minimind_records_are_copied(tmp_path, records, kind):
    got, _ = run(tmp_path, records, kind, fmt="minimind")
    assert got == records


def test_text_and_content_become_pretrain(tmp_path):
    got, summary = run(tmp_path, [{"text": "one"}, {"content": "two", "meta": 1}], "pretrain")
    assert summary["format"] == "text"
    assert got == [{"text": "one"}, {"text": "two"}]


def test_sft_to_rl_and_back(tmp_path):
    records = [{"conversations": [msg("system", "s"), msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2"),
                                  msg("assistant", "a2")]},
               {"conversations": [msg("user", "no answer yet")]}]
    got, _ = run(tmp_path, records[:1], "rl", kind="rl")
    assert got == [{"conversations": records[0]["conversations"][:-1], "answer": "a2"}]
    rl = [{"conversations": [msg("user", "q")], "answer": "42"}]
    got, _ = run(tmp_path, rl, "sft", kind="sft")
    assert got == [{"conversations": [msg("user", "q"), msg("assistant", "42")]}]
    dpo = [{"chosen": [msg("user", "q"), msg("assistant", "good")], "rejected": [msg("user", "q"),
                                                                                 msg("assistant", "bad")]}]
    got, _ = run(tmp_path, dpo, "sft", kind="sft")
    assert got == [{"conversations": [msg("user", "q"), msg("assistant", "good")]}]
    sharegpt = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    got, _ = run(tmp_path, sharegpt, "rl", kind="rl", system="sys")
    assert got == [{"conversations": [msg("system", "sys"), msg("user", "q")], "answer": "a"}]


def test_impossible_targets_and_system_for_text_are_refused(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "doc"}])
    with pytest.raises(ValueError, match="cannot become sft"):
        convert(src, tmp_path / "out.jsonl", kind="sft")
    with pytest.raises(ValueError, match="system prompt"):
        convert(src, tmp_path / "out.jsonl", system="s")
    assert not (tmp_path / "out.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]  # no temporary file left either


def test_system_option_only_where_there_is_none(tmp_path):
    records = [{"messages": [msg("user", "q"), msg("assistant", "a")]},
               {"messages": [msg("system", "own"), msg("user", "q"), msg("assistant", "a")]}]
    got, _ = run(tmp_path, records, "sft", system="default")
    assert [c["conversations"][0] for c in got] == [msg("system", "default"), msg("system", "own")]


@pytest.mark.parametrize("record, fmt", [
    ({"instruction": "i", "output": "o"}, "alpaca"),
    ({"instruction": "i", "chosen": "c", "rejected": "r"}, "alpaca"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt"),
    ({"messages": [{"from": "human", "value": "q"}]}, "sharegpt"),
    ({"chosen": [{"from": "gpt", "value": "c"}], "rejected": [{"from": "gpt", "value": "r"}]}, "sharegpt"),
    ({"messages": [msg("user", "q")]}, "openai"),
    ({"conversations": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}, "openai"),
    ({"prompt": "p", "chosen": "c", "rejected": "r"}, "openai"),
    ({"conversations": [msg("user", "q")]}, "minimind"),
    ({"chosen": [msg("user", "q")], "rejected": [msg("user", "q")]}, "minimind"),
    ({"question": "q", "answer": "a"}, "minimind"),
    ({"text": "t"}, "text"),
    ({"content": "t"}, "text"),
    ({"foo": 1}, None),
])
def test_detect_format(record, fmt):
    assert detect_format(record) == fmt


def test_unknown_format_names_fields_and_the_option(tmp_path):
    src = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError, match=r"odd\.jsonl:1: cannot tell the format .*foo, bar.*--from"):
        convert(src, tmp_path / "out.jsonl")


def test_bad_line_deep_in_file_names_file_line_and_is_skipped(tmp_path):
    good = {"instruction": "q", "output": "a"}
    lines = [json.dumps(good)] * 200
    lines[56] = '{"instruction": "q", "output": "a"'  # line 57: broken JSON
    lines[119] = json.dumps({"instruction": "q"})  # line 120: no output
    lines[149] = json.dumps({"instruction": "q", "output": 7})  # line 150
    src = tmp_path / "big.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"big\.jsonl:57: not valid JSON .*fix: .*--skip-bad"):
        convert(src, out)
    assert not out.exists()
    summary = convert(src, out, skip_bad=True)
    assert (summary["records"], summary["written"], summary["skipped"]) == (200, 197, 3)
    assert [where for where, _ in summary["bad"]] == [f"{src}:57", f"{src}:120", f"{src}:150"]
    assert summary["problems"] == {"not valid JSON (Expecting ',' delimiter at column N)": 1,
                                   '"output" is missing': 1, '"output" is int, not a string': 1}
    assert check_file(out)["records"] == 197


def test_output_problems_are_reported_as_errors(tmp_path):
    # valid sharegpt, but no assistant turn: nothing to learn from -> the validator's problem, with file:line
    records = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
               {"conversations": [{"from": "human", "value": "only a question"}]}]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    with pytest.raises(DataError, match=r"in\.jsonl:2: \"conversations\" has no assistant turn"):
        convert(src, tmp_path / "out.jsonl")


def test_json_array_is_streamed_with_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_CHUNK", 16)  # records span many reads
    records = [{"instruction": f"问题 {i} " + "x" * (i * 7), "output": f"答 {i}"} for i in range(30)]
    records[20] = {"instruction": "no output"}
    text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in records) + "\n]\n"
    src = tmp_path / "data.json"
    src.write_text(text, encoding="utf-8")
    bad_line = text[:text.index('"no output"')].count("\n")  # the line the bad record's "{" is on
    with pytest.raises(DataError, match=rf"data\.json:{bad_line}: \"output\" is missing"):
        convert(src, tmp_path / "out.jsonl")
    summary = convert(src, tmp_path / "out.jsonl", skip_bad=True)
    assert (summary["written"], summary["skipped"]) == (29, 1)
    got = read_jsonl(tmp_path / "out.jsonl")
    assert got[0] == {"conversations": [msg("user", "问题 0 "), msg("assistant", "答 0")]}
    assert got[-1]["conversations"][0]["content"] == records[-1]["instruction"]


def test_json_file_holding_jsonl_and_broken_array(tmp_path):
    src = write_jsonl(tmp_path / "lines.json", [{"text": "a"}, {"text": "b"}])
    assert convert(src, tmp_path / "out.jsonl")["written"] == 2
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "a"},\n {"text": "b"}\n {"text": "c"}]')
    with pytest.raises(DataError, match=r"broken\.json:3: expected , or \]"):
        convert(broken, tmp_path / "out2.jsonl")
    assert not (tmp_path / "out2.jsonl").exists()


ALPACA_ROWS = [
    {"instruction": "q1", "input": "ctx", "output": "a1", "history": [["h", "ha"]]},
    {"instruction": "q2", "input": None, "output": "a2", "history": None},  # how columns hold missing fields
]
ALPACA_EXPECTED = [
    {"conversations": [msg("user", "h"), msg("assistant", "ha"), msg("user", "q1\nctx"), msg("assistant", "a1")]},
    {"conversations": [msg("user", "q2"), msg("assistant", "a2")]},
]


def test_parquet_round_trip(tmp_path):
    src = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ALPACA_ROWS * 1500), src, row_group_size=700)
    summary = convert(src, tmp_path / "out.jsonl")
    assert (summary["format"], summary["records"], summary["written"]) == ("alpaca", 3000, 3000)
    got = read_jsonl(tmp_path / "out.jsonl")
    assert got[:2] == ALPACA_EXPECTED and got[-2:] == ALPACA_EXPECTED
    # a bad row is named by its index
    rows = ALPACA_ROWS * 3
    rows[4] = {**rows[4], "output": None}
    pq.write_table(pa.Table.from_pylist(rows), src)
    with pytest.raises(DataError, match=r"train\.parquet: row 4: \"output\" is missing"):
        convert(src, tmp_path / "out.jsonl")


def test_datasets_folder_and_arrow_file_round_trip(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "s"},
            {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}], "system": None}]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    expected = [{"conversations": [msg("system", "s"), msg("user", "q"), msg("assistant", "a")]},
                {"conversations": [msg("user", "q2"), msg("assistant", "a2")]}]
    summary = convert(folder, tmp_path / "out.jsonl")
    assert (summary["format"], summary["written"]) == ("sharegpt", 2)
    assert read_jsonl(tmp_path / "out.jsonl") == expected
    arrow = next(folder.glob("*.arrow"))
    convert(arrow, tmp_path / "out2.jsonl")
    assert read_jsonl(tmp_path / "out2.jsonl") == expected
    # a DatasetDict of one split is read; of several, the error names them
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows)).save_to_disk(str(tmp_path / "dd"))
    assert convert(tmp_path / "dd", tmp_path / "out3.jsonl")["written"] == 2
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows),
                         test=datasets.Dataset.from_list(rows)).save_to_disk(str(tmp_path / "dd2"))
    with pytest.raises(DataError, match="several splits"):
        convert(tmp_path / "dd2", tmp_path / "out4.jsonl")


def test_failed_conversion_leaves_no_file_and_keeps_the_old_one(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "q", "output": "a"}, {"instruction": "q"}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError):
        convert(src, out)
    assert not out.exists()
    out.write_text("old\n")
    with pytest.raises(DataError):
        convert(src, out)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
    all_bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "q"}] * 3)
    with pytest.raises(DataError, match="every record is bad"):
        convert(all_bad, tmp_path / "none.jsonl", skip_bad=True)
    assert not (tmp_path / "none.jsonl").exists()


def test_gzip_and_missing_inputs_are_clear(tmp_path):
    gz = tmp_path / "in.jsonl"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n'))
    with pytest.raises(DataError, match="gzip"):
        convert(gz, tmp_path / "out.jsonl")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "nope.jsonl", tmp_path / "out.jsonl")


def test_cli_end_to_end(tmp_path, capsys):
    records = [{"instruction": "q", "output": "a"}] * 3 + [{"instruction": "q"}]
    src, out = write_jsonl(tmp_path / "alpaca.jsonl", records), tmp_path / "sub" / "mm.jsonl"
    assert main(["data", "convert", str(src), "--out", str(out)]) == 2
    assert "alpaca.jsonl:4: \"output\" is missing" in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "convert", str(src), "--out", str(out), "--from", "alpaca", "--to", "rl", "--skip-bad",
                 "--system", "You are helpful."]) == 0
    printed = capsys.readouterr().out
    assert "(alpaca)" in printed and "(rl): 4 records, 3 written, 1 skipped" in printed
    assert '1 x "output" is missing' in printed and "alpaca.jsonl:4" in printed
    assert read_jsonl(out)[0] == {"conversations": [msg("system", "You are helpful."), msg("user", "q")],
                                  "answer": "a"}
    assert main(["data", "check", str(out), "--kind", "rl"]) == 0


def test_a_record_of_another_kind_is_a_bad_record(tmp_path):
    records = [{"instruction": "q", "output": "a"}, {"instruction": "q", "chosen": "c", "rejected": "r"}]
    src = write_jsonl(tmp_path / "mixed.jsonl", records)
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: a dpo record in a file of sft records"):
        convert(src, tmp_path / "out.jsonl")
    assert convert(src, tmp_path / "out.jsonl", kind="sft")["written"] == 2  # forced: the chosen side
