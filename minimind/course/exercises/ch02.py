"""Chapter 02, the data: packing a token stream, and how much of a chat the loss learns from."""
from __future__ import annotations

import random

from . import exercise


def _pack(docs, seq_len):
    stream = [t for doc in docs for t in doc]
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


@exercise("02.pack", "join every document into one stream (each already ends with its end-of-text id), then cut "
                     "windows stream[i:i + seq_len] for i = 0, seq_len, 2 * seq_len, ...; a last piece shorter than "
                     "seq_len is left out")
def _check_pack(pack):
    rng = random.Random(0)
    cases = [([[1, 2, 0], [3, 0]], 2), ([[1, 2, 3, 0]], 4), ([[1, 0]], 3)]
    cases += [([[rng.randint(1, 9) for _ in range(rng.randint(0, 7))] + [0] for _ in range(rng.randint(1, 5))],
               rng.randint(1, 6)) for _ in range(30)]
    for docs, seq_len in cases:
        got, want = [list(w) for w in pack([list(d) for d in docs], seq_len)], _pack(docs, seq_len)
        if got != want:
            return f"pack({docs}, {seq_len}) gave {got}; expected {want}"
    return None


def learned_fraction() -> float:
    """The share of the course SFT file's tokens whose label the loss reads (the assistant's)."""
    from ...data.datasets import IGNORE_INDEX, SFTDataset
    from ...data.tokenizer import MiniMindTokenizer
    from ..recipe import data_paths
    paths = data_paths("course")
    data = SFTDataset(paths["sft"], MiniMindTokenizer.from_pretrained(paths["tokenizer"]), max_len=512)
    learned = total = 0
    for i in range(len(data)):
        labels = data[i]["labels"]
        learned += int((labels != IGNORE_INDEX).sum())
        total += len(labels)
    return learned / total


@exercise("02.learned_fraction", "build SFTDataset(paths['sft'], tokenizer, max_len=512) and, over every row, count "
                                 "the labels that are not -100 (IGNORE_INDEX) and all the labels")
def _check_learned(answer):
    want = learned_fraction()
    if abs(float(answer) - want) > 0.005:
        return f"{float(answer):.3f}; the loss learns from {'more' if want > float(answer) else 'less'} than that"
    return None


@exercise("02.predictions_per_window", "position t is scored on token t + 1, and the last position has no next token "
                                       "inside the window")
def _check_shift(answer):
    if int(answer) != 255:
        return f"{answer}: count the positions t whose next token t + 1 is still inside the 256-token window"
    return None
