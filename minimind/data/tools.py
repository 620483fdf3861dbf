"""Tool calls as minimind-3 (and Qwen3) write them: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
in the assistant's text. Parsing never raises: a block that is not a call (bad JSON, no name) is reported as
such, so a server can return it as text and an agent can tell the model what went wrong. Also the tools as the
model is shown them (JSON schemas; the course world's, which the corpus writes into its conversations).

This is text only: running the calls (toolboxes, the multi-turn episode loop) is `minimind.model.tools`.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Optional

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def openai(self, index: Optional[int] = None) -> dict:
        """As OpenAI's API spells it: arguments as a JSON string."""
        out = {"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}
        return out if index is None else {"index": index, **out}


def parse_call(block: str) -> tuple[Optional[ToolCall], Optional[str]]:
    """(call, None) for the text between <tool_call> and </tool_call>, or (None, why it is not a call)."""
    try:
        obj = json.loads(block.strip())
    except json.JSONDecodeError as err:
        return None, f"the tool call is not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None, 'a tool call must be a JSON object with a "name" (and "arguments")'
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None, f'the arguments of {obj["name"]!r} are not a JSON object'
    if not isinstance(args, dict):
        return None, f'the arguments of {obj["name"]!r} must be a JSON object, got {type(args).__name__}'
    return ToolCall(obj["name"], args), None


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[str]]:
    """(the text outside valid calls, the calls, the problems of blocks that were not calls). A block that is
    not a call stays in the text, as written."""
    splitter = ToolCallSplitter()
    pieces = splitter.push(text) + splitter.flush()
    content = "".join(p for kind, p in pieces if kind == "content")
    return content, [p for kind, p in pieces if kind == "call"], splitter.problems


def partial_suffix(text: str, tags: Iterable[str]) -> int:
    """Length of the longest end of text that is a proper prefix of one of the tags: a stream holds it back,
    as the next piece may complete the tag (`<tool_c` + `all>`; chat's `</th` + `ink>` and stop strings too)."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


class ToolCallSplitter:
    """Split a stream of text into ("content", text) and ("call", ToolCall) pieces. Text inside an unfinished
    <tool_call> is held back; at flush() it goes out as content. A block that is not a call goes out as content
    too (its problem is kept in `problems`). The newline the template writes around a call is dropped."""

    def __init__(self):
        self.buf, self.inside = "", False
        self.after_call = False  # the newline after </tool_call> is the template's: drop it when it comes
        self.problems: list[str] = []
        self.calls: list[ToolCall] = []

    def push(self, text: str) -> list[tuple[str, object]]:
        self.buf += text
        out: list[tuple[str, object]] = []
        while True:
            if self.after_call and self.buf:
                self.buf, self.after_call = self.buf.removeprefix("\n"), False
            if not self.inside:
                i = self.buf.find(CALL_OPEN)
                if i < 0:  # hold back what may begin "<tool_call>" or "\n<tool_call>"
                    keep = partial_suffix(self.buf, ("\n" + CALL_OPEN, CALL_OPEN))
                    ready, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                    _add(out, ready)
                    return out
                _add(out, self.buf[:i].removesuffix("\n"))  # "text\n<tool_call>": the newline is the template's
                self.buf, self.inside = self.buf[i + len(CALL_OPEN):], True
            else:
                j = self.buf.find(CALL_CLOSE)
                if j < 0:
                    return out
                block, self.buf, self.inside = self.buf[:j], self.buf[j + len(CALL_CLOSE):], False
                call, problem = parse_call(block)
                if call is None:
                    self.problems.append(problem)
                    _add(out, CALL_OPEN + block + CALL_CLOSE)
                else:
                    self.calls.append(call)
                    out.append(("call", call))
                self.after_call = True

    def flush(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        _add(out, (CALL_OPEN if self.inside else "") + self.buf)
        if self.inside:
            self.problems.append("a <tool_call> was opened and never closed")
        self.buf, self.inside = "", False
        return out


def _add(out: list, text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == "content":
        out[-1] = ("content", out[-1][1] + text)
    else:
        out.append(("content", text))


# -- tools as the model is shown them ----------------------------------------------------------------------------
def tool_schema(name: str, description: str, parameters: dict) -> dict:
    """A tool as OpenAI's `tools` (and the chat templates) spell it; parameters: the JSON schema of its arguments."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def two_numbers() -> dict:
    """The arguments of an arithmetic tool: numbers a and b."""
    return {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"]}


# The course world's register (corpus.py writes registry.json): facts about the world's people that no text the
# model read mentions, so only a lookup can answer questions about them.
REGISTRY_FACTS = ("age", "house", "weight", "shoe")


def course_tool_schemas() -> list[dict]:
    """The course world's tools: add and subtract (exact sums of any size), lookup(name, fact) in the register."""
    lookup = {"type": "object", "properties": {"name": {"type": "string"},
                                               "fact": {"type": "string", "enum": list(REGISTRY_FACTS)}},
              "required": ["name", "fact"]}
    return [tool_schema("add", "a + b", two_numbers()), tool_schema("subtract", "a - b", two_numbers()),
            tool_schema("lookup", "a fact about a person in the town register", lookup)]
