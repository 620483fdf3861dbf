"""Bring your own data: chat, preference and text data in the formats the field uses -> MiniMind's JSONL.

Input formats (`fmt`, detected from the first record unless given):
  alpaca    LLaMA-Factory's alpaca: instruction, input (joined to the instruction with "\\n", as LLaMA-Factory's
            converter does), output, system, history [[q, a], ...]; chosen/rejected strings instead of output -> dpo
  sharegpt  conversations (or messages) of {"from", "value"}: human/user, gpt/assistant, system; a "system" field;
            LLaMA-Factory's preference form (conversations + chosen/rejected message objects) -> dpo
  openai    messages of {"role", "content"}: content a string or a list of {"type": "text", "text"} parts (joined
            with "\\n"); "developer" is read as system; reasoning_content kept; chosen/rejected (message objects,
            lists or strings) after the messages, or after a "prompt" (TRL's preference form) -> dpo
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

import codecs
import itertools
import json
import re
from pathlib import Path
from typing import Callable, Iterator, Optional

from .datasets import PROGRESS_BYTES
from .files import atomic_path
from .records import _FIXES, DataError, detect_kind, validate_record

FORMATS = ("alpaca", "sharegpt", "openai", "minimind", "text")
TARGETS = ("pretrain", "sft", "dpo", "rl")
PROGRESS_ROWS = 200_000  # tables with at least this many rows show a progress bar
REPORT_BAD = 5  # bad records listed in the summary (all are counted)
_BATCH = 1024  # rows read at a time from Parquet, Arrow and datasets folders
_CHUNK = 1 << 20  # bytes read at a time from a JSON array

_FORMAT_FIXES = {
    "alpaca": 'each record must be like {"instruction": "...", "input": "..." (optional), "output": "...", '
              '"system": "..." (optional), "history": [["question", "answer"], ...] (optional)}, or with '
              '"chosen" and "rejected" strings instead of "output"',
    "sharegpt": 'each record must be like {"conversations": [{"from": "human", "value": "..."}, '
                '{"from": "gpt", "value": "..."}]} (roles human/user, gpt/assistant, system)',
    "openai": 'each record must be like {"messages": [{"role": "user", "content": "..."}, '
              '{"role": "assistant", "content": "..."}]} (roles system/user/assistant; content a string or '
              'text parts)',
    "text": 'each record must be like {"text": "..."} or {"content": "..."}',
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "model": "assistant", "system": "system"}
_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TOOL_ROLES = ("function_call", "observation", "tool", "function", "tool_call", "tool_response", "ipython")
# cross-kind conversions allowed when the output kind is forced (kind=..., --to)
_RETARGETS = {("sft", "rl"), ("rl", "sft"), ("dpo", "sft"), ("dpo", "rl")}


class NeedsPackage(ImportError, ValueError):
    """An optional package a file type needs is not installed (a ValueError too: the CLI prints it plainly)."""


class _Bad(Exception):
    """One record's problem: (problem, fix)."""

    def __init__(self, problem: str, fix: Optional[str] = None):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


# -- reading: (where, record or None, bad or None) for every record of a file ------------------------------
def _iter_jsonl(path: Path, update: Callable[[int], None]) -> Iterator[tuple]:
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            raise DataError(f"{path} is gzip-compressed: unpack it first (gunzip -k {path}) and pass the file")
        fh.seek(0)
        for lineno, raw in enumerate(fh, 1):
            update(len(raw))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield f"{path}:{lineno}", None, _Bad(
                    f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)",
                    "re-encode the file as UTF-8 (e.g. iconv -f GBK -t UTF-8 in > out)")
                continue
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line), None
            except json.JSONDecodeError as err:
                yield f"{path}:{lineno}", None, _Bad(f"not valid JSON ({err.msg} at column {err.colno})",
                                                     "each line must hold exactly one JSON object")
            except RecursionError:
                yield f"{path}:{lineno}", None, _Bad("JSON nested too deeply to read", "one record per line")


def _iter_json(path: Path, update: Callable[[int], None]) -> Iterator[tuple]:
    """A JSON array, streamed: records are decoded one by one from a sliding buffer (memory: the largest record
    plus 1 MiB, not the file). A .json file holding JSONL (it starts with "{") is read as JSONL."""
    with open(path, "rb") as fh:
        head = fh.read(4096).decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if head.startswith("{"):
        yield from _iter_jsonl(path, update)
        return
    if not head.startswith("["):
        raise DataError(f"{path}: not a JSON array of records (it starts with {head[:20]!r}); fix: a .json file "
                        "must hold [{...}, {...}] or one JSON object per line")
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        buf, pos, line, eof = "", 0, 1, False

        def more(size: int = _CHUNK) -> None:
            nonlocal buf, pos, eof
            raw = fh.read(size)
            update(len(raw))
            eof = not raw
            try:
                text = utf8.decode(raw, final=eof)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: invalid UTF-8 near line {line} ({err.reason}); fix: re-encode the "
                                "file as UTF-8 (e.g. iconv -f GBK -t UTF-8 in > out)") from None
            buf, pos = buf[pos:] + text, 0

        def skip_space() -> str:
            """The next non-space character ("" at the end of the file), counting lines."""
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""
                more()

        def broken(what: str) -> DataError:
            return DataError(f"{path}:{line}: {what}; fix: the file must be one JSON array of records "
                             "(a broken array cannot be skipped past: repair the file, or convert it to JSONL)")

        more()
        skip_space()
        pos += 1  # "["
        if skip_space() == "]":
            return
        while True:
            if not skip_space():
                raise broken("the array is not closed (the file ends early)")
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if eof:
                        raise broken(f"not valid JSON ({err.msg})") from None
                    more(max(_CHUNK, len(buf)))  # a record longer than the buffer: read more, doubling
                    continue
                except RecursionError:
                    raise broken("JSON nested too deeply to read") from None
                if end == len(buf) and not eof:  # a number or a literal may go on in the next chunk
                    more(max(_CHUNK, len(buf)))
                    continue
                break
            yield f"{path}:{line}", record, None
            line += buf.count("\n", pos, end)
            pos = end
            sep = skip_space()
            pos += 1
            if sep == "]":
                return
            if sep != ",":
                raise broken(f"expected , or ] between records, found {sep!r}" if sep else "the array is not "
                             "closed (the file ends early)")


def _rows(table_batches, where: str, update: Callable[[int], None]) -> Iterator[tuple]:
    row = 0
    for batch in table_batches:
        for start in range(0, batch.num_rows, _BATCH):
            part = batch.slice(start, _BATCH).to_pylist()
            update(len(part))
            for record in part:
                yield f"{where}: row {row}", record, None
                row += 1


def _pyarrow(path: Path):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (loads the submodule)
    except ImportError:
        raise NeedsPackage(f"reading {path.name} needs pyarrow: pip install pyarrow") from None
    return pyarrow


def _open_source(path: Path) -> tuple[int, str, Callable]:
    """(total for a progress bar, its unit, records(update) -> iterator of (where, record, bad))."""
    if path.is_dir():
        return _open_hf_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pa = _pyarrow(path)
        try:
            pf = pa.parquet.ParquetFile(path)
        except pa.ArrowException as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        return pf.metadata.num_rows, "rows", lambda update: _rows(pf.iter_batches(batch_size=_BATCH), str(path),
                                                                   update)
    if suffix == ".arrow":
        pa = _pyarrow(path)

        def batches():
            source = pa.memory_map(str(path))
            try:
                reader = pa.ipc.open_stream(source)  # what datasets writes
            except pa.ArrowInvalid:
                source.seek(0)
                try:
                    reader = pa.ipc.open_file(source)
                except pa.ArrowInvalid as err:
                    raise DataError(f"{path}: not an Arrow IPC file or stream ({err})") from None
                yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
                return
            yield from reader

        return 0, "rows", lambda update: _rows(batches(), str(path), update)
    size = path.stat().st_size
    reader = _iter_json if suffix == ".json" else _iter_jsonl
    return size, "B", lambda update: reader(path, update)


def _open_hf_folder(path: Path) -> tuple[int, str, Callable]:
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"{path} is a folder, but not a dataset saved with datasets' save_to_disk ({err}); fix: "
                        "pass that folder, or a .jsonl, .json, .parquet or .arrow file") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            splits = ", ".join(ds)
            raise DataError(f"{path} holds several splits ({splits}); fix: convert one at a time, e.g. "
                            f"{path / next(iter(ds))}")
        ds = next(iter(ds.values()))

    def records(update):
        columns = ds.column_names
        for start in range(0, len(ds), _BATCH):
            batch = ds[start:start + _BATCH]
            rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
            update(len(rows))
            for i, record in enumerate(rows):
                yield f"{path}: row {start + i}", record, None

    return len(ds), "rows", records


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


def _tool_error(what: str, role: str) -> _Bad:
    return _Bad(f"{what} has the tool role {role!r}: tool calls and results ({', '.join(_TOOL_ROLES[:2])} in "
                "ShareGPT, tool in OpenAI's format) are not supported yet",
                "leave tool-use records out (or skip them: --skip-bad)")


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
    if role in _TOOL_ROLES:
        raise _tool_error(what, role)
    if role not in _SHAREGPT_ROLES:
        raise _Bad(f"{what} has unknown role {role!r} (roles: human/user, gpt/assistant, system)")
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
    msgs = _with_system(record, msgs)
    if _value(record, "chosen") is not None or _value(record, "rejected") is not None:
        return "dpo", {side: msgs + _answer_side(_value(record, side), side, _sharegpt_message)
                       for side in ("chosen", "rejected")}
    return "sft", {"conversations": msgs}


def _openai_content(content, what: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise _Bad(f"{what} content[{i}] is a {kind!r} part: only text parts are supported",
                           "keep text-only records (or skip the others: --skip-bad)")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _Bad(f"{what} content is {'missing' if content is None else type(content).__name__}, not a string "
               "or a list of text parts")


def _openai_message(m, what: str) -> dict:
    if not isinstance(m, dict):
        raise _Bad(f"{what} is {type(m).__name__}, not a message object")
    role = m.get("role")
    if role is None:
        raise _Bad(f'{what} has no "role" field')
    if role in _TOOL_ROLES or m.get("tool_calls") or m.get("function_call"):
        raise _tool_error(what, role if role in _TOOL_ROLES else "assistant with tool_calls")
    if role not in _OPENAI_ROLES:
        raise _Bad(f"{what} has unknown role {role!r} (roles: system, user, assistant)")
    out = {"role": _OPENAI_ROLES[role], "content": _openai_content(m.get("content"), what)}
    if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"]:
        out["reasoning_content"] = m["reasoning_content"]
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
    msgs = _with_system(record, msgs)
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
