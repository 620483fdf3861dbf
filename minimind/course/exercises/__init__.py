"""Chapter exercises and their checks. `check(name, answer)` prints right, or what is wrong and a hint, and
never a traceback; it returns True when the answer is right.

An exercise is registered by its chapter's module (ch01.py, ...) with `@exercise(name, hint)` on a function
that takes the learner's answer and returns None when it is right, or one sentence saying what is wrong. The
notebooks hold the exercises and their solutions (hidden cells that end in `assert check(...)`), so
`make test` runs every solution through its check; tests/test_exercises.py checks that a wrong answer is
told so.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

CHAPTERS = tuple(f"ch{n:02d}" for n in range(1, 15))


@dataclass
class Exercise:
    name: str                                  # "03.causal_attention": chapter, then what it is about
    hint: str                                  # shown with a wrong answer
    verify: Callable[[Any], Optional[str]]     # None when right, else what is wrong


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, hint: str):
    """Register `verify(answer) -> None | what is wrong` as the check of exercise `name`."""
    def register(verify):
        EXERCISES[name] = Exercise(name, hint, verify)
        return verify
    return register


def _load() -> None:
    for chapter in CHAPTERS:
        importlib.import_module(f"{__name__}.{chapter}")


def check(name: str, answer: Any = None) -> bool:
    """Print whether `answer` solves exercise `name` (what is wrong and a hint if not); True when it does."""
    _load()
    if name not in EXERCISES:
        print(f"no exercise {name!r}; the exercises are: {', '.join(sorted(EXERCISES))}")
        return False
    ex = EXERCISES[name]
    if answer is None or answer is Ellipsis:
        problem = "no answer yet: fill in the cell above, then run it again"
    else:
        try:
            problem = ex.verify(answer)
        except Exception as e:  # the learner's code failed: say how, in one line
            problem = f"your code raised {type(e).__name__}: {e}"
            if callable(answer) and "NoneType" in str(e):
                problem = "your function returned None: write its body (the `...`), then run the cell again"
    if problem is None:
        print(f"right: {name}")
        return True
    print(f"not yet ({name}): {problem}\nhint: {ex.hint}")
    return False



__all__ = ["EXERCISES", "Exercise", "check", "exercise"]
