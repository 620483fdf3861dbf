"""Does an answer come from its reasoning trace? For the course's word problems, whose `<think>` traces are
one-step sums ("2 plus 1 is 3."): each step checked, and the final answer compared with the trace's result."""
from __future__ import annotations

import re

_STEP = re.compile(r"(-?\d+) (plus|minus) (-?\d+) is (-?\d+)")


def trace_check(reply: str) -> dict:
    """{"traced": the reply has a closed <think> block, "steps": the one-step sums in it, "steps_right": how many
    are right, "result": the last step's result (None without steps), "follows": the text after the trace
    names that result as its last number}."""
    if "</think>" not in reply:
        return {"traced": False, "steps": 0, "steps_right": 0, "result": None, "follows": False}
    trace, final = reply.split("</think>", 1)
    steps = _STEP.findall(trace)
    right = sum(int(c) == (int(a) + int(b) if op == "plus" else int(a) - int(b)) for a, op, b, c in steps)
    result = int(steps[-1][3]) if steps else None
    numbers = re.findall(r"-?\d+", final)
    return {"traced": True, "steps": len(steps), "steps_right": right, "result": result,
            "follows": result is not None and bool(numbers) and int(numbers[-1]) == result}
