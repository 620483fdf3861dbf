"""The OpenAI API's shapes, checked: an error as OpenAI words it, a request's messages, tools and sampling
fields turned into ours (each bad field named with the fix), and the usage a response reports."""
from __future__ import annotations

from typing import Optional

from ..data.tokenizer import TOOL_ROLES
from .chat import GenerationSettings, Reply


class APIError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- request validation ------------------------------------------------------------------------------------
def _number(body: dict, name: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name,
                       "invalid_type")
    if not lo <= value <= hi:
        raise APIError(400, f"'{name}' is {value}: it must be between {lo} and {hi}", name, "invalid_value")
    return value


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a string or a list of up to 4 strings", "stop", "invalid_type")
    return [s for s in stop if s]


def _content(value, i: int) -> str:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but no text
            raise APIError(400, f"messages[{i}].content holds a lone UTF-16 surrogate: send valid Unicode",
                           f"messages[{i}].content", "invalid_value") from None
        return value
    if isinstance(value, list):  # content parts: [{"type": "text", "text": ...}]
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) "
                                    "are supported", f"messages[{i}].content", "invalid_type")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"messages[{i}].content must be a string, got {type(value).__name__}",
                   f"messages[{i}].content", "invalid_type")


def parse_messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "'messages' is required: a list of {'role', 'content'} objects", "messages",
                       "missing_required_parameter")
    if not isinstance(msgs, list):
        raise APIError(400, f"'messages' must be a list, got {type(msgs).__name__}", "messages", "invalid_type")
    if not msgs:
        raise APIError(400, "'messages' is empty: send at least one message", "messages", "empty_array")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]",
                           "invalid_type")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system message
            role = "system"
        if role not in TOOL_ROLES:
            raise APIError(400, f"messages[{i}].role is {role!r}: use one of {', '.join(TOOL_ROLES)}",
                           f"messages[{i}].role", "invalid_value")
        calls = m.get("tool_calls") if role == "assistant" else None
        if ("content" not in m or m["content"] is None) and not calls:  # a call alone may have no content
            raise APIError(400, f"messages[{i}] has no 'content'", f"messages[{i}].content",
                           "missing_required_parameter")
        msg = {"role": role, "content": "" if m.get("content") is None else _content(m["content"], i)}
        if role == "assistant" and isinstance(m.get("reasoning_content"), str):
            msg["reasoning_content"] = m["reasoning_content"]
        if calls:
            msg["tool_calls"] = _tool_calls(calls, i)
        out.append(msg)
    return out


def _tool_calls(calls, i: int) -> list[dict]:
    """An assistant message's tool_calls as the template renders them: [{"name", "arguments"}]."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise APIError(400, f"{where} must be a list", where, "invalid_type")
    out = []
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(400, f"{where}[{k}] must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}",
                           f"{where}[{k}]", "invalid_type")
        args = fn.get("arguments", "{}")
        if not isinstance(args, (str, dict)):
            raise APIError(400, f"{where}[{k}].function.arguments must be a JSON string", f"{where}[{k}]",
                           "invalid_type")
        out.append({"name": fn["name"], "arguments": args})
    return out


def parse_tools(body: dict) -> tuple[Optional[list], Optional[str]]:
    """(the tools to show the model, None when it must not call any) and the forced call's prefix: "" for
    tool_choice "required" (some call), the function's name for {"type": "function", "function": {"name"}}."""
    tools, choice = body.get("tools"), body.get("tool_choice", "auto")
    if tools is None or tools == []:
        return None, None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise APIError(400, "'tools' must be a list of {'type': 'function', 'function': {'name', 'description', "
                            "'parameters'}}", "tools", "invalid_type")
    names = [t["function"]["name"] for t in tools]
    if choice in (None, "auto"):
        return tools, None
    if choice == "none":
        return None, None
    if choice == "required":
        return tools, ""
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise APIError(400, f"tool_choice names {name!r}, which is not in 'tools' ({', '.join(names)})",
                           "tool_choice", "invalid_value")
        return tools, name
    raise APIError(400, "'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', "
                        "'function': {'name': ...}}", "tool_choice", "invalid_value")


def forced_call_prefix(name: Optional[str]) -> str:
    """What the reply is made to start with when a call is required: the call's opening (and its name)."""
    if name is None:
        return ""
    return '<tool_call>\n{"name": "' + (f'{name}", "arguments": ' if name else "")


def generation_settings(body: dict, default_max: int, context: int) -> GenerationSettings:
    """The sampling fields of a request (max_tokens up to the model's context, temperature, top_p, top_k,
    repetition_penalty, seed, stop) as GenerationSettings."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", default_max, 1, context, integer=True)
    n = _number(body, "n", 1, 1, 1, integer=True)
    del n
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", "seed", "invalid_type")
    if seed is not None and not 0 <= seed < 2 ** 63:  # torch's generator takes a 64-bit seed
        raise APIError(400, f"'seed' is {seed}: it must be between 0 and 2**63 - 1", "seed", "invalid_value")
    return GenerationSettings(
        max_new_tokens=max_tokens, temperature=float(_number(body, "temperature", 0.7, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 0.9, 0.0, 1.0)) or 1e-6,
        top_k=int(_number(body, "top_k", 0, 0, 1_000_000, integer=True)),
        repetition_penalty=float(_number(body, "repetition_penalty", 1.0, 0.01, 10.0)),
        seed=seed, stop=_stop(body))


def usage(reply: Reply) -> dict:
    """A response's token counts."""
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}
