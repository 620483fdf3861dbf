"""Reading and checking every stage's JSONL records; a bad line raises a DataError naming file:line and fix.

Kinds: pretrain ({"text"}), sft (conversations), dpo (chosen and rejected), rl (conversations, maybe an answer)
and eval (question and answer). Tool use as MiniMind writes it: a system message's `tools`, an assistant's
`tool_calls` (lists, or lists as JSON strings) and `tool` messages holding results.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator, Optional

from .tokenizer import TOOL_ROLES

KINDS = ("pretrain", "sft", "dpo", "rl", "eval")

_FIXES = {
    "pretrain": 'each line must be a JSON object like {"text": "..."}',
    "sft": 'each line must be like {"conversations": [{"role": "user", "content": "..."}, '
           '{"role": "assistant", "content": "..."}]}',
    "dpo": 'each line must be like {"chosen": [messages ending with an assistant turn], '
           '"rejected": [messages ending with an assistant turn]}',
    "rl": 'each line must be like {"conversations": [{"role": "user", "content": "..."}], "answer": "..."} '
          '(answer optional)',
    "eval": 'each line must be like {"question": "...", "answer": "..."} (plus "choices" and "label" '
            'for multiple choice)',
}


class DataError(ValueError):
    """A bad input line: the message names the file, the line and the fix."""


class Records(list):
    """A list of records that also remembers the bad lines it skipped: `.bad` = [(line, problem)]."""

    def __init__(self, *args, path=None, kind=None):
        super().__init__(*args)
        self.path, self.kind, self.bad = path, kind, []


def detect_kind(record: dict) -> str:
    if not isinstance(record, dict):
        return "pretrain"
    if "chosen" in record or "rejected" in record:
        return "dpo"
    if "conversations" in record:
        return "rl" if "answer" in record else "sft"
    if "question" in record:
        return "eval"
    return "pretrain"


def _check_messages(msgs, field: str, need_assistant: bool, last_assistant: bool = False) -> Optional[str]:
    if not isinstance(msgs, list):
        return f'"{field}" is {type(msgs).__name__}, not a list of messages'
    if not msgs:
        return f'"{field}" is an empty conversation'
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f'{field}[{i}] is {type(m).__name__}, not a message object'
        for key in ("role", "content"):
            if key not in m:
                return f'{field}[{i}] has no "{key}" field'
        if m["role"] not in TOOL_ROLES:
            return f'{field}[{i}] has unknown role {m["role"]!r} (roles: {", ".join(TOOL_ROLES)})'
        if not isinstance(m["content"], str):
            if m["content"] is None and m["role"] == "assistant" and m.get("tool_calls"):
                return f'{field}[{i}] content is null: write "" for a turn that only calls tools'
            return f'{field}[{i}] content is {type(m["content"]).__name__}, not a string'
        problem = _check_tool_fields(m, f"{field}[{i}]")
        if problem:
            return problem
    if need_assistant and not any(m["role"] == "assistant" for m in msgs):
        return f'"{field}" has no assistant turn: nothing to learn from'
    if last_assistant and msgs[-1]["role"] != "assistant":
        return f'"{field}" does not end with an assistant turn'
    return None


def _json_list(value):
    """A list given as itself or as a JSON string (MiniMind's files hold `tools` and `tool_calls` as strings);
    anything else comes back unchanged. Raises json.JSONDecodeError for a string that is not JSON."""
    return json.loads(value) if isinstance(value, str) else value


def _absent(value) -> bool:
    return value is None or (isinstance(value, (str, list)) and not value)  # as MiniMind's `if m.get(...)`


def _check_tool_fields(m: dict, where: str) -> Optional[str]:
    """The problem with a message's `tools` (system) or `tool_calls` (assistant), None when fine or absent."""
    for key, role, what in (("tools", "system", "tool schemas"), ("tool_calls", "assistant", "tool calls")):
        if _absent(m.get(key)):
            continue
        if m["role"] != role:
            return f'{where} is a {m["role"]} message with "{key}": only a {role} message carries {what}'
        try:
            value = _json_list(m[key])
        except json.JSONDecodeError as err:
            return f'{where} "{key}" is a string but not valid JSON ({err.msg} at column {err.colno})'
        if not isinstance(value, list):
            return (f'{where} "{key}" is {type(value).__name__}, not a list of {what} '
                    "(or that list as a JSON string)")
        for k, item in enumerate(value):
            if not isinstance(item, dict):
                return f'{where} {key}[{k}] is {type(item).__name__}, not an object'
            if key == "tool_calls":
                call = item["function"] if item.get("function") else item  # as the template reads it
                if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"] \
                        or "arguments" not in call:
                    return (f'{where} tool_calls[{k}] is not a tool call: write {{"name": ..., "arguments": {{...}}}} '
                            'or {"type": "function", "function": {"name": ..., "arguments": ...}}')
    return None


def validate_record(record, kind: str) -> Optional[str]:
    """The problem with one record, or None when it is fine."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    if kind == "pretrain":
        if "text" not in record:
            return 'missing field "text"'
        if not isinstance(record["text"], str):
            return f'"text" is {type(record["text"]).__name__}, not a string'
        if not record["text"].strip():
            return '"text" is empty'
        return None
    if kind == "sft":
        if "conversations" not in record:
            return 'missing field "conversations"'
        return _check_messages(record["conversations"], "conversations", need_assistant=True)
    if kind == "dpo":
        for side in ("chosen", "rejected"):
            if side not in record:
                return f'missing field "{side}"'
            problem = _check_messages(record[side], side, need_assistant=True, last_assistant=True)
            if problem:
                return problem
        return None
    if kind == "rl":
        if "conversations" not in record:
            return 'missing field "conversations"'
        problem = _check_messages(record["conversations"], "conversations", need_assistant=False)
        if problem:
            return problem
        if not any(m["role"] == "user" for m in record["conversations"]):
            return '"conversations" has no user turn: no prompt'
        if "answer" in record and not isinstance(record["answer"], (str, int, float)):
            return f'"answer" is {type(record["answer"]).__name__}, not a string or number'
        return None
    # eval
    for key in ("question", "answer"):
        if key not in record:
            return f'missing field "{key}"'
    if record.get("type") == "mc":
        choices, label = record.get("choices"), record.get("label")
        if not isinstance(choices, list) or len(choices) < 2:
            return 'multiple choice needs "choices", a list of at least two'
        if not isinstance(label, int) or not 0 <= label < len(choices):
            return f'"label" must be the index of the right choice (0..{len(choices) - 1})'
    return None


def iter_jsonl(path, kind: str = "auto", skip_bad: bool = False, bad: Optional[list] = None,
               limit: Optional[int] = None, on_bytes=None) -> Iterator[dict]:
    """Validated records of a JSONL file, streamed; kind: pretrain, sft, dpo, rl, eval or auto (from the first line).
    A bad line raises DataError "file:line: problem; fix: ..."; with skip_bad it goes to `bad` as (line, problem).
    on_bytes(n) is called with each line's size (a progress bar's update)."""
    for _, record in _numbered_jsonl(path, kind, skip_bad, bad, limit, on_bytes):
        yield record


def _numbered_jsonl(path, kind: str = "auto", skip_bad: bool = False, bad: Optional[list] = None,
                    limit: Optional[int] = None, on_bytes=None) -> Iterator[tuple[int, dict]]:
    """iter_jsonl's records with their line numbers: (line, record)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of: auto, {', '.join(KINDS)}")
    bad = [] if bad is None else bad
    n = 0
    with open(path, "rb") as fh:
        magic = fh.read(2)
        if magic == b"\x1f\x8b":
            raise DataError(f"{path} is gzip-compressed: unpack it first (gunzip -k {path}) and pass the .jsonl")
        fh.seek(0)
        for lineno, raw in enumerate(fh, 1):
            if limit is not None and n >= limit:
                return
            if on_bytes is not None:
                on_bytes(len(raw))
            problem = fix = None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)"
                fix = "re-encode the file as UTF-8 (e.g. iconv -f GBK -t UTF-8 in > out)"
            else:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    problem = f"not valid JSON ({err.msg} at column {err.colno})"
                    fix = "each line must hold exactly one JSON object"
                except RecursionError:
                    problem = "JSON nested too deeply to read"
                    fix = "each line must hold one record in MiniMind's format"
                else:
                    if kind == "auto":
                        kind = detect_kind(record)
                    problem = validate_record(record, kind)
                    fix = _FIXES[kind]
            if problem:
                if not skip_bad:
                    raise DataError(f"{path}:{lineno}: {problem}; fix: {fix} "
                                    f"(or skip bad lines: skip_bad=True, --skip-bad)")
                bad.append((lineno, problem))
                continue
            n += 1
            yield lineno, record


def read_jsonl(path, kind: str = "auto", skip_bad: bool = False, limit: Optional[int] = None) -> Records:
    """All validated records of a JSONL file (see iter_jsonl); `.bad` lists the lines skipped."""
    records = Records(path=Path(path), kind=kind)
    records.extend(iter_jsonl(path, kind, skip_bad=skip_bad, bad=records.bad, limit=limit))
    if records.bad:
        warnings.warn(f"{path}: skipped {len(records.bad)} bad line(s), first at line {records.bad[0][0]}: "
                      f"{records.bad[0][1]}", stacklevel=2)
    if not records and not records.bad:
        raise DataError(f"{path}: no records (the file is empty); fix: {_FIXES.get(kind, 'add records')}")
    if not records:
        raise DataError(f"{path}: every line is bad ({len(records.bad)}), first at line {records.bad[0][0]}: "
                        f"{records.bad[0][1]}")
    return records


def conversation_warnings(messages) -> list[str]:
    """What is valid but unusual in a conversation's order of roles (trains, but rarely as meant)."""
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    found = []
    turns = [r for r in roles if r != "system"]
    if "system" in roles[1:]:
        found.append("a system turn after the start")
    if turns and turns[0] == "assistant":
        found.append("starts with the assistant")
    if any(a == b != "tool" for a, b in zip(turns, turns[1:])):  # several tool results in a row are normal
        found.append("two turns of the same role in a row")
    return found


def check_file(path, kind: str = "auto", skip_bad: bool = False, limit: Optional[int] = None) -> dict:
    """Validate a file: a summary (records, bad lines, kind, warnings: {what: [first lines]}) or a DataError
    naming the first bad line."""
    bad: list = []
    n, kinds, warned = 0, set(), {}
    for rec in iter_jsonl(path, kind, skip_bad=skip_bad, bad=bad, limit=limit):
        n += 1
        if kind == "auto" and n == 1:
            kinds.add(detect_kind(rec))
        for field in ("conversations", "chosen", "rejected"):
            for what in conversation_warnings(rec.get(field) or []):
                warned.setdefault(what, []).append(n)
    if n == 0 and not bad:
        raise DataError(f"{path}: no records (the file is empty)")
    return dict(path=str(path), kind=kind if kind != "auto" else (kinds.pop() if kinds else "?"), records=n,
                bad=len(bad), bad_lines=bad[:20], warnings={w: lines[:5] for w, lines in warned.items()},
                warning_counts={w: len(lines) for w, lines in warned.items()})


def record_texts(record: dict) -> list[str]:
    """The text of any kind of record (what a tokenizer learns from)."""
    if "text" in record:
        return [record["text"]]
    texts = []
    for field in ("conversations", "chosen", "rejected"):
        for m in record.get(field) or []:
            texts.append(m["content"])
            if m.get("reasoning_content"):
                texts.append(m["reasoning_content"])
    if "question" in record:
        texts.append(record["question"])
    return texts


def iter_texts(paths, skip_bad: bool = False) -> Iterator[str]:
    """Texts from JSONL files of any format (kind detected per file) or plain text files (one text per
    paragraph, i.e. blocks separated by a blank line)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths:
        path = Path(path)
        if path.suffix in (".jsonl", ".json"):
            for rec in iter_jsonl(path, "auto", skip_bad=skip_bad):
                yield from record_texts(rec)
        else:
            if not path.exists():
                raise FileNotFoundError(f"{path} not found")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: invalid UTF-8 at byte {err.start}; fix: re-encode the file as UTF-8")
            yield from (p.strip() for p in text.split("\n\n") if p.strip())


def to_hf_dataset(path, kind: str = "auto", skip_bad: bool = False):
    """The validated records as a `datasets.Dataset` (for .map, .filter, .train_test_split ...)."""
    import datasets
    return datasets.Dataset.from_list(list(read_jsonl(path, kind, skip_bad=skip_bad)))
