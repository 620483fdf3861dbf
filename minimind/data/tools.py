"""Tool calls as minimind-3 (and Qwen3) write them: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
in the assistant's text. Parsing never raises: a block that is not a call (bad JSON, no name) is reported as
such, so a server can return it as text and an agent can tell the model what went wrong.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .files import find_root

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


# -- running tools -----------------------------------------------------------------------------------------------
@dataclass
class Tool:
    """A Python function the model may call, with the JSON schema of its arguments (what the model is shown)."""
    name: str
    description: str
    parameters: dict
    fn: object

    def schema(self) -> dict:
        """As OpenAI's `tools` (and the chat template) spell it."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


class ToolBox:
    """The registered tools, and nothing else: a call to any other name, bad arguments, an exception or a slow
    tool all come back as an error message for the model, never as an exception (no eval, no shell)."""

    def __init__(self, tools=(), timeout: float = 5.0):
        self.tools = {t.name: t for t in tools}
        self.timeout = timeout

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def run(self, call: ToolCall) -> str:
        """The tool's result as text (JSON for anything but a string), or "error: ..." saying what went wrong."""
        tool = self.tools.get(call.name)
        if tool is None:
            return f"error: there is no tool {call.name!r}; the tools are {', '.join(self.tools) or 'none'}"
        problem = _check_arguments(call.arguments, tool.parameters)
        if problem:
            return f"error: {call.name}: {problem}"
        from concurrent.futures import ThreadPoolExecutor
        from concurrent.futures import TimeoutError as Timeout
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            result = pool.submit(tool.fn, **call.arguments).result(timeout=self.timeout)
        except Timeout:
            return f"error: {call.name} took longer than {self.timeout:g} s"
        except Exception as err:  # a tool's own failure is the model's information, not the caller's crash
            return f"error: {call.name} failed: {type(err).__name__}: {err}"
        finally:
            pool.shutdown(wait=False)
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


_JSON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "object": dict,
               "array": list}


def _check_arguments(args: dict, schema: dict) -> Optional[str]:
    """Why `args` do not fit a JSON schema's properties and required list (the subset tools here use)."""
    props = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in args]
    if missing:
        return f"missing argument(s) {', '.join(missing)}"
    unknown = [k for k in args if k not in props]
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)}; it takes {', '.join(props) or 'none'}"
    for k, v in args.items():
        kind = _JSON_TYPES.get(props[k].get("type"))
        if kind and (not isinstance(v, kind) or (isinstance(v, bool) and props[k].get("type") != "boolean")):
            return f"argument {k}={v!r} should be a {props[k]['type']}"
        if "enum" in props[k] and v not in props[k]["enum"]:
            return f"argument {k}={v!r} should be one of {', '.join(map(str, props[k]['enum']))}"
    return None


@dataclass
class Episode:
    """A multi-turn exchange: the messages (the model's turns and the tools' results), its tool calls and how
    it ended ("answer", "max_turns", "length")."""
    messages: list
    calls: list = field(default_factory=list)
    ended: str = ""

    @property
    def answer(self) -> str:
        last = self.messages[-1]
        return last["content"] if last["role"] == "assistant" and not last.get("tool_calls") else ""


def run_episode(generate, messages: list[dict], toolbox: ToolBox, max_turns: int = 4) -> Episode:
    """Let the model answer `messages`, running the tools it calls, until it answers without a call or
    max_turns model turns have passed. generate(messages, tools) -> the model's text for the next turn."""
    episode = Episode(list(messages))
    for _ in range(max_turns):
        text = generate(episode.messages, toolbox.schemas())
        content, calls, problems = parse_tool_calls(text)
        turn = {"role": "assistant", "content": content.strip()}
        if not calls:
            episode.messages.append(turn)
            if problems:  # it tried to call and failed: tell it why, give it another turn
                episode.messages.append({"role": "tool", "content": "error: " + "; ".join(problems)})
                continue
            episode.ended = "answer"
            return episode
        turn["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in calls]
        episode.messages.append(turn)
        for call in calls:
            result = toolbox.run(call)
            episode.calls.append((call, result))
            episode.messages.append({"role": "tool", "content": result})
    episode.ended = "max_turns"
    return episode


# -- toolboxes by name (a stage option picks one) ----------------------------------------------------------------
def _number_tool(name: str, description: str, fn) -> Tool:
    schema = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
              "required": ["a", "b"]}
    return Tool(name, description, schema, lambda a, b: _tidy(fn(a, b)))


def _tidy(x):
    """7.0 -> 7: answers read as the course writes numbers (inside a result object too)."""
    if isinstance(x, dict):
        return {k: _tidy(v) for k, v in x.items()}
    return int(x) if isinstance(x, float) and x.is_integer() else x



def _divide(a, b):
    if b == 0:
        raise ValueError("division by zero")
    return a / b


def calculator() -> ToolBox:
    """add, subtract, multiply, divide: exact arithmetic the model can call instead of guessing."""
    return ToolBox([_number_tool("add", "a + b", lambda a, b: a + b),
                    _number_tool("subtract", "a - b", lambda a, b: a - b),
                    _number_tool("multiply", "a * b", lambda a, b: a * b),
                    _number_tool("divide", "a / b", _divide)])


# The course world's register (corpus.py writes registry.json): facts about the world's people that no text the
# model read mentions, so only a lookup can answer questions about them.
REGISTRY_FACTS = ("age", "house", "weight", "shoe")


def lookup_tool(registry: dict) -> Tool:
    """lookup(name, fact) -> {fact: value}: one fact about a person of the register ({name: {fact: value}})."""
    def lookup(name: str, fact: str):
        person = registry.get(name)
        if person is None:
            raise ValueError(f"nobody called {name!r} is in the register")
        return {fact: person[fact]}
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "fact": {"type": "string", "enum": list(REGISTRY_FACTS)}},
              "required": ["name", "fact"]}
    return Tool("lookup", "a fact about a person in the town register", schema, lookup)


def course_tools(registry=None) -> ToolBox:
    """The course world's tools: add and subtract (exact sums of any size) and lookup in the register.
    registry: {name: {fact: value}}, or the path of the corpus's registry.json (default: data/course's)."""
    if registry is None or isinstance(registry, (str, Path)):
        path = Path(registry) if registry else find_root() / "data" / "course" / "registry.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no register for the course toolbox; write the course corpus "
                                    "(minimind data course) or name the file: --tools course:PATH")
        registry = json.loads(path.read_text(encoding="utf-8"))["people"]
    # results as JSON objects: the number follows ": " as it follows a space in the answer, so the model copies
    # the very token it will write (after the tool turn's newline, "59" would be another token than " 59")
    return ToolBox([_number_tool("add", "a + b", lambda a, b: {"result": a + b}),
                    _number_tool("subtract", "a - b", lambda a, b: {"result": a - b}), lookup_tool(registry)])


TOOLBOXES = {"calculator": calculator, "course": course_tools, "none": ToolBox}


def toolbox(spec: str) -> ToolBox:
    """A toolbox by name, "NAME" or "NAME:ARG" (course:PATH names the register file)."""
    name, _, arg = spec.partition(":")
    if name not in TOOLBOXES:
        raise ValueError(f"unknown toolbox {spec!r}: choose one of {', '.join(TOOLBOXES)} (course:PATH for a "
                         "register file)")
    if arg and name != "course":
        raise ValueError(f"toolbox {name!r} takes no argument (got {spec!r})")
    return TOOLBOXES[name](arg) if arg else TOOLBOXES[name]()
