"""Bring your own data: chat, preference and text data in the formats the field uses -> MiniMind's JSONL.

Input formats (`fmt`, detected from the first record unless given):
  alpaca    LLaMA-Factory's alpaca: instruction, input (joined to the instruction with "\\n", as LLaMA-Factory's
            converter does), output, system, history [[q, a], ...]; chosen/rejected strings instead of output -> dpo
  sharegpt  conversations (or messages) of {"from", "value"}: human/user, gpt/assistant, system; a "system" field;
            LLaMA-Factory's tool calling: function_call turns (a call or a list of calls as JSON), observation
            turns (the results) and a "tools" field (its bare schemas, often as a JSON string); LLaMA-Factory's
            preference form (conversations + chosen/rejected message objects) -> dpo
  openai    messages of {"role", "content"}: content a string or a list of {"type": "text", "text"} parts (joined
            with "\\n") and {"type": "reasoning"} parts (-> reasoning_content); "developer" is read as system;
            reasoning_content kept; tool_calls (or the older function_call) on assistant messages, tool (or
            function) messages, "tools" on the record; chosen/rejected (message objects, lists or strings) after
            the messages, or after a "prompt" (TRL's preference form) -> dpo
Tool use comes out as MiniMind writes it: the tools on the system message (one with empty content is made when
there is none), each call as {"name", "arguments": {...}} on an assistant turn, results as "tool" turns.
  minimind  MiniMind's own records (pretrain, sft, dpo, rl, eval): validated and copied
  text      {"text": ...} or {"content": ...} -> pretrain
Input files: .jsonl (any other suffix is read as JSONL too), .json (a JSON array, streamed with a small incremental
reader, or JSONL under a .json name), .parquet (row batches, needs pyarrow), .arrow (an Arrow IPC file or stream,
as the datasets library writes them) and a folder saved with `datasets`' save_to_disk.

Output kind: what the records are (sft; dpo for preference data; pretrain for text; MiniMind's own kind), or
forced with `kind`: sft -> rl moves the last assistant turn into "answer", rl -> sft appends the answer as an
assistant turn, dpo -> sft / rl use the chosen side. Every output record is checked with `validate_record`, so a
converted file always passes `minimind data check`. A bad input record raises a DataError naming file:line (JSON,
JSONL) or file: row i (0-based, Parquet, Arrow, datasets folders) and the fix; with skip_bad it is counted and
skipped. The output is written atomically: a failed conversion leaves no file behind (and an old one untouched).
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Optional

from .datasets import PROGRESS_BYTES
from .files import atomic_path
from .records import _FIXES, DataError, detect_kind, validate_record
from .sources import _Bad, _open_source

FORMATS = ("alpaca", "sharegpt", "openai", "minimind", "text")
TARGETS = ("pretrain", "sft", "dpo", "rl")
PROGRESS_ROWS = 200_000  # tables with at least this many rows show a progress bar
REPORT_BAD = 5  # bad records listed in the summary (all are counted)

_FORMAT_FIXES = {
    "alpaca": 'each record must be like {"instruction": "...", "input": "..." (optional), "output": "...", '
              '"system": "..." (optional), "history": [["question", "answer"], ...] (optional)}, or with '
              '"chosen" and "rejected" strings instead of "output"',
    "sharegpt": 'each record must be like {"conversations": [{"from": "human", "value": "..."}, '
                '{"from": "gpt", "value": "..."}]} (roles human/user, gpt/assistant, system; function_call and '
                'observation with a "tools" field for tool use)',
    "openai": 'each record must be like {"messages": [{"role": "user", "content": "..."}, '
              '{"role": "assistant", "content": "..."}]} (roles system/user/assistant/tool; content a string or '
              'text parts; tool_calls on assistant messages)',
    "text": 'each record must be like {"text": "..."} or {"content": "..."}',
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "model": "assistant", "system": "system"}
_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# tool use: the roles that carry a call (an assistant turn) and those that carry its result (a "tool" turn)
_CALL_ROLES = ("function_call", "tool_call")
_RESULT_ROLES = ("observation", "tool", "function", "tool_response", "ipython")
# cross-kind conversions allowed when the output kind is forced (kind=..., --to)
_RETARGETS = {("sft", "rl"), ("rl", "sft"), ("dpo", "sft"), ("dpo", "rl")}


# -- one record of each format -> (its kind, a MiniMind record of that kind) -------------------------------
def _value(record: dict, key: str):
    """record[key], with None (how Parquet and Arrow write a missing field) read as missing."""
    return record.get(key) if isinstance(record, dict) else None


def _string(value, what: str, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} is {'missing' if value is None else type(value).__name__ + ', not a string'}")
    if not allow_empty and not value.strip():
        raise _Bad(f"{what} is empty")
    return value


def _message_list(value, what: str) -> list:
    if not isinstance(value, list):
        raise _Bad(f'"{what}" is {"missing" if value is None else type(value).__name__ + ", not a list"}')
    return value


def _json_value(value, what: str):
    """A value given as itself or as JSON text (tool calls, arguments and schemas often travel as strings)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise _Bad(f"{what} is a string but not valid JSON ({err.msg} at column {err.colno})") from None


def _tool_call(call, what: str) -> dict:
    """One call -> {"name", "arguments": {...}}: from {"name", "arguments"} (arguments an object or JSON text),
    or OpenAI's {"type": "function", "function": {...}}."""
    call = _json_value(call, what)
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise _Bad(f'{what} is not a tool call: it needs a "name" and "arguments"')
    arguments = _json_value(call.get("arguments", {}), f"{what} arguments")
    if not isinstance(arguments, dict):
        raise _Bad(f"{what} arguments is {type(arguments).__name__}, not an object of named arguments")
    return {"name": call["name"], "arguments": arguments}


def _tool_calls(value, what: str) -> list:
    """A call, a list of calls (parallel calls), or either as JSON text -> a list of {"name", "arguments"}."""
    value = _json_value(value, what)
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise _Bad(f"{what} holds no tool call")
    return [_tool_call(c, f"{what}[{k}]" if isinstance(value, list) else what) for k, c in enumerate(calls)]


def _tool_schemas(value, what: str = '"tools"') -> list:
    """A request's tools -> OpenAI's [{"type": "function", "function": {...}}]; LLaMA-Factory's bare
    {"name", "description", "parameters"} schemas (often a JSON string) are wrapped."""
    value = _json_value(value, what)
    if not isinstance(value, list):
        raise _Bad(f"{what} is {type(value).__name__}, not a list of tool schemas")
    out = []
    for k, tool in enumerate(value):
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            out.append({"type": "function", "function": tool["function"]})
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out.append({"type": "function", "function": tool})
        else:
            raise _Bad(f"{what}[{k}] is not a tool schema: it needs a \"name\" (and \"parameters\")")
    return out


def _with_tools(record: dict, msgs: list) -> list:
    """The record's tools, if any, on its system message (a system message with empty content is made for them)."""
    tools = _value(record, "tools")
    if tools is None or (isinstance(tools, (str, list)) and not tools):
        return msgs
    schemas = _tool_schemas(tools)
    if msgs and msgs[0]["role"] == "system":
        return [{**msgs[0], "tools": schemas}] + msgs[1:]
    return [{"role": "system", "content": "", "tools": schemas}] + msgs


def _alpaca(record: dict) -> tuple[str, dict]:
    msgs = []
    system = _value(record, "system")
    if system is not None:
        if _string(system, '"system"').strip():
            msgs.append({"role": "system", "content": system})
    history = _value(record, "history")
    if history is not None:
        for i, turn in enumerate(_message_list(history, "history")):
            if not isinstance(turn, (list, tuple)) or len(turn) != 2:
                raise _Bad(f"history[{i}] is not a [question, answer] pair")
            msgs.append({"role": "user", "content": _string(turn[0], f"history[{i}][0]")})
            msgs.append({"role": "assistant", "content": _string(turn[1], f"history[{i}][1]")})
    query = [_string(_value(record, key), f'"{key}"') for key in ("instruction", "input")
             if _value(record, key) is not None]
    query = [q for q in query if q]
    if not query:
        raise _Bad('"instruction" and "input" are both missing or empty: no question')
    msgs.append({"role": "user", "content": "\n".join(query)})
    if _value(record, "chosen") is not None or _value(record, "rejected") is not None:
        sides = {side: msgs + [{"role": "assistant", "content": _string(_value(record, side), f'"{side}"')}]
                 for side in ("chosen", "rejected")}
        return "dpo", sides
    return "sft", {"conversations": msgs + [{"role": "assistant",
                                             "content": _string(_value(record, "output"), '"output"')}]}


def _sharegpt_message(m, what: str) -> dict:
    if not isinstance(m, dict):
        raise _Bad(f"{what} is {type(m).__name__}, not a message object")
    role = m.get("from") if m.get("from") is not None else m.get("role")
    content = m.get("value") if m.get("value") is not None else m.get("content")
    if role is None:
        raise _Bad(f'{what} has no "from" field')
    if role in _CALL_ROLES:  # LLaMA-Factory: the value is the call (or a list of calls) as JSON
        return {"role": "assistant", "content": "", "tool_calls": _tool_calls(content, f'{what} "value"')}
    if role in _RESULT_ROLES:
        return {"role": "tool", "content": _string(content, f'{what} "value"')}
    if role not in _SHAREGPT_ROLES:
        raise _Bad(f"{what} has unknown role {role!r} (roles: human/user, gpt/assistant, system, "
                   "function_call, observation)")
    return {"role": _SHAREGPT_ROLES[role], "content": _string(content, f'{what} "value"')}


def _answer_side(value, what: str, read_message) -> list:
    """A preference side: a message object, a list of them, or a string (the assistant's answer)."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [read_message(value, what)]
    if isinstance(value, list):
        return [read_message(m, f"{what}[{i}]") for i, m in enumerate(value)]
    raise _Bad(f'"{what}" is {"missing" if value is None else type(value).__name__}, not a message or a string')


def _with_system(record: dict, msgs: list) -> list:
    system = _value(record, "system")
    if system is not None and _string(system, '"system"').strip() and not (msgs and msgs[0]["role"] == "system"):
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


def _sharegpt(record: dict) -> tuple[str, dict]:
    field = "conversations" if _value(record, "conversations") is not None else "messages"
    msgs = [_sharegpt_message(m, f"{field}[{i}]") for i, m in enumerate(_message_list(_value(record, field), field))]
    msgs = _with_tools(record, _with_system(record, msgs))
    if _value(record, "chosen") is not None or _value(record, "rejected") is not None:
        return "dpo", {side: msgs + _answer_side(_value(record, side), side, _sharegpt_message)
                       for side in ("chosen", "rejected")}
    return "sft", {"conversations": msgs}


def _openai_content(content, what: str, allow_null: bool = False) -> tuple[str, str]:
    """(text, reasoning) of a message's content: a string, or parts of type text (joined with "\\n") and
    reasoning (LLaMA-Factory's reasoning-with-tools messages). allow_null: an assistant turn that only calls."""
    if content is None and allow_null:
        return "", ""
    if isinstance(content, str):
        return content, ""
    if isinstance(content, list):
        texts, reasoning = [], []
        for i, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            key = {"text": "text", "reasoning": "reasoning"}.get(kind)
            value = part.get(key) if key else None
            if kind == "reasoning" and value is None:
                value = part.get("text")  # {"type": "reasoning", "text": ...} too
            if key is None or not isinstance(value, str):
                raise _Bad(f"{what} content[{i}] is a {kind!r} part: only text and reasoning parts are supported",
                           "keep text-only records (or skip the others: --skip-bad)")
            (reasoning if kind == "reasoning" else texts).append(value)
        return "\n".join(texts), "\n".join(reasoning)
    raise _Bad(f"{what} content is {'missing' if content is None else type(content).__name__}, not a string "
               "or a list of text parts")


def _openai_message(m, what: str) -> dict:
    if not isinstance(m, dict):
        raise _Bad(f"{what} is {type(m).__name__}, not a message object")
    role = m.get("role")
    if role is None:
        raise _Bad(f'{what} has no "role" field')
    if role in _RESULT_ROLES:  # a tool's result ("function": the older function-calling API)
        return {"role": "tool", "content": _openai_content(m.get("content"), what)[0]}
    if role in _CALL_ROLES:
        role = "assistant"
    if role not in _OPENAI_ROLES:
        raise _Bad(f"{what} has unknown role {role!r} (roles: system, user, assistant, tool)")
    calls = m.get("tool_calls") or (m.get("function_call") and [m["function_call"]])  # older API: one call
    text, reasoning = _openai_content(m.get("content"), what, allow_null=bool(calls))
    out = {"role": _OPENAI_ROLES[role], "content": text}
    if calls:
        if out["role"] != "assistant":
            raise _Bad(f"{what} is a {role} message with tool calls: only an assistant calls tools")
        out["tool_calls"] = _tool_calls(calls, f"{what} tool_calls")
    reasoning = m["reasoning_content"] if isinstance(m.get("reasoning_content"), str) else reasoning
    if reasoning:
        out["reasoning_content"] = reasoning
    return out


def _openai(record: dict) -> tuple[str, dict]:
    preference = _value(record, "chosen") is not None or _value(record, "rejected") is not None
    field = next((f for f in ("messages", "conversations", "prompt") if _value(record, f) is not None),
                 None if preference else "messages")
    prefix = _value(record, field) if field else []
    if isinstance(prefix, str) and field == "prompt":
        msgs = [{"role": "user", "content": prefix}]
    else:
        msgs = [_openai_message(m, f"{field}[{i}]") for i, m in enumerate(_message_list(prefix, field))]
    msgs = _with_tools(record, _with_system(record, msgs))
    if preference:
        return "dpo", {side: msgs + _answer_side(_value(record, side), side, _openai_message)
                       for side in ("chosen", "rejected")}
    return "sft", {"conversations": msgs}


def _minimind(record: dict) -> tuple[str, dict]:
    return detect_kind(record), record


def _text(record: dict) -> tuple[str, dict]:
    key = "text" if _value(record, "text") is not None else "content"
    return "pretrain", {"text": _string(_value(record, key), f'"{key}"')}


_CONVERTERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "openai": _openai, "minimind": _minimind, "text": _text}


def detect_format(record) -> Optional[str]:
    """The input format of one record (the first of a file), or None when it is none of FORMATS."""
    if not isinstance(record, dict):
        return None
    if "instruction" in record:
        return "alpaca"
    field = "conversations" if isinstance(record.get("conversations"), list) else "messages"
    msgs = record.get(field)
    if isinstance(msgs, list):
        first = next((m for m in msgs if isinstance(m, dict)), {})
        if "from" in first or "value" in first:
            return "sharegpt"
        if field == "messages" or "chosen" in record or any(
                isinstance(m, dict) and not isinstance(m.get("content"), str) for m in msgs):
            return "openai"
        return "minimind"
    if "chosen" in record or "rejected" in record:
        if "prompt" in record:
            return "openai"
        side = record.get("chosen")
        if isinstance(side, list) and side and isinstance(side[0], dict) and "from" in side[0]:
            return "sharegpt"
        return "minimind"
    if isinstance(record.get("text"), str) or isinstance(record.get("content"), str):
        return "text"
    if "question" in record:
        return "minimind"
    return None


# -- one record -> the output kind -------------------------------------------------------------------------
def _retarget(record: dict, have: str, want: str) -> dict:
    if have == "dpo":
        record, have = {"conversations": record["chosen"]}, "sft"
    if have == want:
        return record
    msgs = list(record["conversations"])
    if want == "rl":
        if msgs and msgs[-1].get("role") == "assistant":
            return {"conversations": msgs[:-1], "answer": msgs[-1]["content"]}
        return {"conversations": msgs}
    # rl -> sft: the answer becomes the assistant's turn
    answer = record.get("answer")
    if answer not in (None, "") and not (msgs and msgs[-1].get("role") == "assistant"):
        msgs.append({"role": "assistant", "content": str(answer)})
    return {"conversations": msgs}


def _add_system(record: dict, kind: str, system: str) -> dict:
    fields = ("chosen", "rejected") if kind == "dpo" else ("conversations",)
    out = dict(record)
    for field in fields:
        msgs = out.get(field)
        if isinstance(msgs, list) and not (msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system"):
            out[field] = [{"role": "system", "content": system}] + msgs
    return out


def _check_system(system: Optional[str], kind: str) -> None:
    if system is not None and kind not in ("sft", "dpo", "rl"):
        raise ValueError(f"a system prompt (--system) is for conversations; {kind} records have none")


def _problem_key(problem: str) -> str:
    """A problem with its numbers taken out, so the same problem at different places counts as one."""
    return re.sub(r"\d+", "N", problem)


def convert(src, out, fmt: str = "auto", kind: Optional[str] = None, skip_bad: bool = False,
            system: Optional[str] = None, progress: Optional[bool] = None) -> dict:
    """Convert `src` (a .jsonl, .json, .parquet or .arrow file, or a datasets folder) in format `fmt` (one of
    FORMATS, or auto: from the first record) into MiniMind's JSONL at `out` (written atomically), of kind `kind`
    (pretrain, sft, dpo, rl; None: the records' own). system: a system prompt given to every conversation that
    starts without one. progress: a progress bar (None: on big inputs only).

    Returns dict(src, out, format, kind, records (read), written, skipped, problems {problem: count},
    bad [(where, problem)] (the first few)). Raises DataError on the first bad record unless skip_bad, and
    when nothing at all could be written."""
    src, out = Path(src), Path(out)
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")
    if kind is not None and kind not in TARGETS:
        raise ValueError(f"unknown output kind {kind!r}; choose one of: {', '.join(TARGETS)}")
    if not src.exists():
        raise FileNotFoundError(f"{src} not found")
    if out.resolve() == src.resolve():
        raise ValueError(f"{out}: the output would replace the input; write it elsewhere")
    if kind is not None:
        _check_system(system, kind)
    total, unit, open_records = _open_source(src)
    counts = dict(records=0, written=0, skipped=0)
    problems: dict = {}
    bad: list = []
    target = kind

    def reject(where: str, problem: str, fix: Optional[str]) -> None:
        if not skip_bad:
            raise DataError(f"{where}: {problem}; fix: {fix} (or skip bad records: skip_bad=True, --skip-bad)")
        counts["skipped"] += 1
        problems[_problem_key(problem)] = problems.get(_problem_key(problem), 0) + 1
        if len(bad) < REPORT_BAD:
            bad.append((where, problem))

    from tqdm.auto import tqdm
    show = progress if progress is not None else total >= (PROGRESS_BYTES if unit == "B" else PROGRESS_ROWS)
    bar = tqdm(total=total or None, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
               mininterval=1.0, desc=f"converting {src.name}", disable=not show)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            items = open_records(bar.update)
            head = []  # records up to the first readable one, which decides the format and the kind
            for item in items:
                head.append(item)
                if item[2] is None:
                    break
            first = next((record for _, record, problem in head if problem is None), None)
            if fmt == "auto" and first is not None:
                fmt = detect_format(first)
                if fmt is None:
                    keys = ", ".join(map(str, first)) if isinstance(first, dict) else type(first).__name__
                    raise DataError(f"{head[-1][0]}: cannot tell the format from the first record (fields: "
                                    f"{keys}); fix: pass the format (--from {'|'.join(FORMATS)}) or reshape the "
                                    "records (see `minimind data convert --help`)")
            convert_one = _CONVERTERS.get(fmt)
            for where, record, problem in itertools.chain(head, items):
                counts["records"] += 1
                if problem is not None:
                    reject(where, problem.problem, problem.fix)
                    continue
                try:
                    if not isinstance(record, dict):
                        raise _Bad(f"is a JSON {type(record).__name__}, not an object")
                    have, converted = convert_one(record)
                except _Bad as err:
                    reject(where, err.problem, err.fix or _FORMAT_FIXES.get(fmt) or _FIXES.get(target or have))
                    continue
                if target is None:
                    target = have
                    _check_system(system, target)
                if have != target:
                    if kind is not None and (have, target) in _RETARGETS:
                        converted = _retarget(converted, have, target)
                    elif kind is not None and counts["written"] == 0 and not bad:
                        raise ValueError(f"{fmt} {have} records cannot become {target} records (possible: sft <-> "
                                         "rl, dpo -> sft or rl, by the chosen side)")
                    elif validate_record(converted, target) is not None:
                        reject(where, f"a {have} record in a file of {target} records", _FIXES[target])
                        continue
                if system is not None:
                    converted = _add_system(converted, target, system)
                problem = validate_record(converted, target)
                if problem:
                    reject(where, problem, f"{_FORMAT_FIXES[fmt]} (it becomes: {_FIXES[target]})"
                           if fmt in _FORMAT_FIXES else _FIXES[target])
                    continue
                fh.write(json.dumps(converted, ensure_ascii=False) + "\n")
                counts["written"] += 1
            if counts["written"] == 0:
                if counts["records"] == 0:
                    raise DataError(f"{src}: no records (the input is empty)")
                raise DataError(f"{src}: every record is bad ({counts['skipped']}), the first at "
                                f"{bad[0][0]}: {bad[0][1]}; nothing written")
    finally:
        bar.close()
    return dict(src=str(src), out=str(out), format=fmt, kind=target, **counts, problems=problems, bad=bad)
