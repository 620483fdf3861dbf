"""Answers: normalising a reply and matching it against the reference (exact match, the RL rewards and the
chapters grade with these). A reply's <think> block never counts; numbers match by value."""
from __future__ import annotations

import re
import unicodedata
from typing import Optional

_THINK = re.compile(r"<think>.*?</think>", re.S)
# a number: digits with thousands commas and a decimal part; a sign only where it cannot be a minus
# between two operands ("12-5" holds 12 and 5, "x = -7" holds -7)
_NUMBER = re.compile(r"(?:(?<![\w.])[-+])?(?<![\d.])\d(?:\d|,(?=\d{3}))*(?:\.\d+)?")
_ARTICLES = {"a", "an", "the"}


def strip_thinking(text: str) -> str:
    """The answer part of a reply: drops <think>...</think> (and anything before a lone </think>)."""
    text = _THINK.sub(" ", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text.replace("<think>", " ")


def _number_value(token: str) -> Optional[float]:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def parse_number(text: str) -> Optional[float]:
    """The value of text if it is one number ("1,024", "-3.50", "7."), else None."""
    t = normalize_answer(text)
    return _number_value(t) if t and _NUMBER.fullmatch(t) else None


def extract_numbers(text: str) -> list[float]:
    text = unicodedata.normalize("NFKC", strip_thinking(text))
    return [v for v in (_number_value(m) for m in _NUMBER.findall(text)) if v is not None]


def normalize_answer(text: str) -> str:
    """Lowercase, NFKC (full-width digits and letters become ASCII), no reasoning block, no punctuation
    (except inside numbers: 3.5, 1,000 -> 1000), no articles, single spaces."""
    text = unicodedata.normalize("NFKC", strip_thinking(str(text))).lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)                 # 1,000 -> 1000
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)                 # keep decimal points only
    text = "".join(" " if (unicodedata.category(c).startswith(("P", "S")) and c not in ".-")
                   else c for c in text)
    text = re.sub(r"-(?!\d)|(?<=\w)-", " ", text)                     # keep minus signs of numbers
    words = [w for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def _tokens(text: str) -> list[str]:
    # words, and CJK characters one by one (Chinese has no spaces between words)
    return re.findall(r"[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+", text)


def answer_matches(prediction: str, reference, mode: str = "auto") -> bool:
    """Whether a reply gives the reference (<think> ignored). mode "exact": equal normalised texts; "contains": the
    reference's words in order; "number": the last number equals it; "auto": "number" if it is one, else "contains"."""
    if mode not in ("auto", "exact", "contains", "number"):
        raise ValueError(f"unknown match mode {mode!r}: use auto, exact, contains or number")
    ref_text = str(reference)
    ref_num = parse_number(ref_text) if isinstance(reference, str) else (
        float(reference) if isinstance(reference, (int, float)) and not isinstance(reference, bool) else None)
    if mode == "auto":
        mode = "number" if ref_num is not None else "contains"
    if mode == "number":
        if ref_num is None:
            raise ValueError(f"reference {reference!r} is not a number: use mode 'contains' or 'exact'")
        nums = extract_numbers(prediction)
        return bool(nums) and abs(nums[-1] - ref_num) <= 1e-6 * max(1.0, abs(ref_num))
    pred, ref = normalize_answer(prediction), normalize_answer(ref_text)
    if not ref:
        return False
    if mode == "exact":
        return pred == ref
    p, r = _tokens(pred), _tokens(ref)
    return any(p[i:i + len(r)] == r for i in range(len(p) - len(r) + 1))
