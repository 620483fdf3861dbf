"""Which lexicon template a course question was written from. Chapters 11 and 14 break their held-out results
down by wording: a wording is one choice the model makes the same way for every name and number in it."""
from __future__ import annotations

import functools
import re
from typing import Optional, Union

from ..data.corpus import LEXICONS

RL_KINDS = ("rl_ask",)                    # chapter 11's RL prompts, keyed by relation
TOOL_RL_KINDS = ("tool_rl_ask", "later_ask")  # chapter 14's, keyed by fact or operation ("later_ask": an age, later)


def _templates(entry, kind: str) -> list[tuple[str, str]]:
    if isinstance(entry, str):
        return [(kind, entry)]
    if isinstance(entry, dict):
        return [(key, tpl) for key, tpls in entry.items() for tpl in ([tpls] if isinstance(tpls, str) else tpls)]
    return [(kind, tpl) for tpl in entry]


@functools.lru_cache(maxsize=None)
def _patterns(kinds: tuple, lang: str) -> list[tuple[str, str, re.Pattern]]:
    """(key, template, regex) for every template of the lexicon entries `kinds`; a {field} matches any text."""
    lex = LEXICONS[lang]
    unknown = [k for k in kinds if k not in lex]
    if unknown:
        raise ValueError(f"no {unknown[0]!r} templates in the {lang!r} lexicon; choose from: {', '.join(lex)}")
    return [(key, tpl, re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+?)", re.escape(tpl)) + "$"))
            for kind in kinds for key, tpl in _templates(lex[kind], kind)]


def wording(question: str, kinds: Union[str, tuple] = RL_KINDS,
            lang: str = "en") -> tuple[Optional[str], Optional[str], dict]:
    """(key, template, fields) of a question written from a template of the lexicon entries `kinds` (RL_KINDS or
    TOOL_RL_KINDS), e.g. "Where is Mavi from?" -> ("home", "Where is {name} from?", {"name": "Mavi"}).
    (None, None, {}) when no template makes it."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return next(((key, tpl, m.groupdict()) for key, tpl, pat in _patterns(kinds, lang) if (m := pat.match(question))),
                (None, None, {}))
