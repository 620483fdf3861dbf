"""Switches for the hand-written fast paths, so each can be measured against the plain formula it replaces
(`minimind bench`'s "fast paths" table) and turned off while debugging. One is left: "loss", the loss
straight from the hidden states a chunk of tokens at a time (loss.py). Off under torch.compile, which
fuses the plain formula by itself. A fast path stays only if it pays (book/performance.md).
"""
from __future__ import annotations

import contextlib

import torch

FAST_PATHS = {"loss": True}


def use(name: str) -> bool:
    """Whether the fast path `name` runs here."""
    return FAST_PATHS[name] and not torch.compiler.is_compiling()


@contextlib.contextmanager
def plain(*names: str):
    """Within the block, the named fast paths (all of them when none is named) use the plain formula."""
    unknown = [n for n in names if n not in FAST_PATHS]
    if unknown:
        raise ValueError(f"unknown fast path(s) {unknown}: choose from {sorted(FAST_PATHS)}")
    saved = dict(FAST_PATHS)
    FAST_PATHS.update({n: False for n in names or FAST_PATHS})
    try:
        yield
    finally:
        FAST_PATHS.update(saved)
