"""Running tools: a `ToolBox` of registered Python functions, the course's toolboxes by name, and the one
multi-turn loop that chat, tool evaluation and the agent stage share: model turn, its calls run, their results
as a tool turn, model turn, ... until the model answers without a call or the turns run out.

Here, beside generation, not in data/: data/tools.py reads and writes the calls' text; this runs them. The
loop leaves generation to its callers, since chat streams one reply and the agent stage generates a batch of
episodes as tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from ..data.files import find_root
from ..data.tools import ToolCall, course_tool_schemas, tool_schema, two_numbers


@dataclass
class Tool:
    """A Python function the model may call, with the JSON schema of its arguments (what the model is shown)."""
    name: str
    description: str
    parameters: dict
    fn: object

    @classmethod
    def from_schema(cls, schema: dict, fn) -> "Tool":
        """The tool a schema shows (as `tool_schema` writes it), run by fn."""
        f = schema["function"]
        return cls(f["name"], f["description"], f["parameters"], fn)

    def schema(self) -> dict:
        return tool_schema(self.name, self.description, self.parameters)


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


# -- the multi-turn loop -----------------------------------------------------------------------------------------
@dataclass
class Episode:
    """One multi-turn exchange with tools, as it is played: its messages (those it starts from, then the model's
    turns and the tools' results), each result with its call (None for a block that was not a call), counts,
    the answer, and how it ended: "answer" (a turn without calls), "final" (a turn no other may follow, its
    calls not run), "max_turns" (still calling when the turns ran out) or a caller's reason; "" while it runs."""
    messages: list = field(default_factory=list)
    results: list = field(default_factory=list)  # (ToolCall or None, result text), in the order run
    answer: str = ""
    calls: int = 0   # well-formed calls written
    broken: int = 0  # <tool_call> blocks that were not calls
    turns: int = 0   # model turns
    ended: str = ""

    def model_turn(self, toolbox: Optional[ToolBox], content: str, calls: list[ToolCall], problems: list[str], *,
                   text: Optional[str] = None, reasoning: str = "", final: bool = False) -> list[tuple]:
        """Take one model turn, split as `parse_tool_calls` splits it: the text outside calls, the calls, the
        problems of blocks that were not calls. A turn without calls or problems is the answer; so is a final
        one (no turn may follow: the last, or one cut off), whose message keeps `text`, what the model wrote.
        Otherwise each call runs and its result becomes a tool turn, then each problem an "error: ..." one (the
        model may try again). -> this turn's (call, result) pairs, call None for a broken block."""
        self.turns += 1
        self.calls, self.broken = self.calls + len(calls), self.broken + len(problems)
        said = {"reasoning_content": reasoning} if reasoning else {}
        if final or not calls and not problems:
            self.messages.append({"role": "assistant", "content": (content if text is None else text).strip(),
                                  **said})
            self.answer, self.ended = content.strip(), "final" if calls or problems else "answer"
            return []
        turn = {"role": "assistant", "content": content.strip(), **said}
        if calls:
            turn["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in calls]
        ran = [(c, toolbox.run(c)) for c in calls] + [(None, f"error: {p}") for p in problems]
        self.messages += [turn] + [{"role": "tool", "content": result} for _, result in ran]
        self.results += ran
        return ran


def tool_turns(episodes: list[Episode], max_turns: int) -> Iterator[tuple[list[Episode], bool]]:
    """The multi-turn loop, turn by turn: yields the episodes still running and whether this is the last turn.
    The caller generates their model turns (a batch together, or one streamed) and hands each to
    `Episode.model_turn`, which runs its calls; an episode ends when it answers, or after max_turns turns."""
    for turn in range(max_turns):
        running = [e for e in episodes if not e.ended]
        if not running:
            return
        yield running, turn == max_turns - 1
    for e in episodes:  # still calling when the turns ran out
        e.ended = e.ended or "max_turns"


# -- toolboxes by name (a stage option picks one) ----------------------------------------------------------------
def _number_tool(name: str, description: str, fn) -> Tool:
    return Tool(name, description, two_numbers(), lambda a, b: _tidy(fn(a, b)))


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


def lookup_in(registry: dict):
    """lookup(name, fact) -> {fact: value}: one fact about a person of the register ({name: {fact: value}})."""
    def lookup(name: str, fact: str):
        person = registry.get(name)
        if person is None:
            raise ValueError(f"nobody called {name!r} is in the register")
        return {fact: person[fact]}
    return lookup


def course_tools(registry=None) -> ToolBox:
    """The course world's tools (`course_tool_schemas`, as its corpus shows them): add and subtract, and lookup in
    the register. registry: {name: {fact: value}}, or the path of the corpus's registry.json (default:
    data/course's)."""
    if registry is None or isinstance(registry, (str, Path)):
        path = Path(registry) if registry else find_root() / "data" / "course" / "registry.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no register for the course toolbox; write the course corpus "
                                    "(minimind data course) or name the file: --tools course:PATH")
        registry = json.loads(path.read_text(encoding="utf-8"))["people"]
    # results as JSON objects: the number follows ": " as it follows a space in the answer, so the model copies
    # the very token it will write (after the tool turn's newline, "59" would be another token than " 59")
    run = {"add": lambda a, b: _tidy({"result": a + b}), "subtract": lambda a, b: _tidy({"result": a - b}),
           "lookup": lookup_in(registry)}
    return ToolBox([Tool.from_schema(s, run[s["function"]["name"]]) for s in course_tool_schemas()])


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
