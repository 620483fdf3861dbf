"""Chapter 01, the tokenizer: one BPE merge, counting pairs, and what the chat template costs."""
from __future__ import annotations

import random
from collections import Counter

from . import exercise


def _merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _cases(seed=0, n=40):
    rng = random.Random(seed)
    cases = [([1, 2, 3, 1, 2], (1, 2)), ([1, 1, 1], (1, 1)), ([1, 1, 1, 1], (1, 1)), ([5], (5, 5)), ([], (1, 2)),
             ([2, 1, 2, 1], (1, 2))]
    for _ in range(n):
        ids = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        cases.append((ids, (rng.randint(0, 3), rng.randint(0, 3))))
    return cases


@exercise("01.merge", "walk the list left to right; where ids[i], ids[i + 1] is the pair, write new_id and skip "
                      "both; a token used in one merge cannot start the next (merge([1, 1, 1], (1, 1), 9) is [9, 1])")
def _check_merge(merge):
    for ids, pair in _cases():
        got, want = merge(list(ids), pair, 9), _merge(ids, pair, 9)
        if list(got) != want:
            return f"merge({ids}, {pair}, 9) gave {list(got)}; expected {want}"
    return None


def _most_frequent(ids):
    counts = Counter(zip(ids, ids[1:]))
    return max(counts, key=counts.get) if counts else None  # ties: the pair seen first (dicts keep order)


@exercise("01.most_frequent_pair", "count zip(ids, ids[1:]) with collections.Counter; among equal counts take the "
                                   "pair that occurs first; a list of fewer than two ids has no pair (None)")
def _check_most_frequent(most_frequent_pair):
    for ids, _ in _cases(seed=1):
        got, want = most_frequent_pair(list(ids)), _most_frequent(ids)
        if (tuple(got) if got is not None else None) != want:
            return f"most_frequent_pair({ids}) gave {got}; expected {want}"
    return None


def template_overhead() -> int:
    """Tokens the course chat template adds around one user word and its generation prompt."""
    from ...data.tokenizer import MiniMindTokenizer
    from ..recipe import data_paths
    tok = MiniMindTokenizer.from_pretrained(data_paths("course")["tokenizer"])
    word = "hello"
    text = tok.apply_chat_template([{"role": "user", "content": word}], add_generation_prompt=True)
    return len(tok.encode(text)) - len(tok.encode(word))


@exercise("01.template_overhead", "render [{'role': 'user', 'content': 'hello'}] with "
                                  "tok.apply_chat_template(..., add_generation_prompt=True), count its tokens with "
                                  "tok.encode, and subtract the tokens of 'hello' alone")
def _check_overhead(answer):
    want = template_overhead()
    if int(answer) != want:
        return f"{answer} tokens; the template adds {'more' if want > int(answer) else 'fewer'} than that"
    return None
