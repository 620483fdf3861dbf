"""Switches for the hand-written fast paths, so that each one can be measured against the plain formula
it replaces (`minimind bench` does, in its "fast paths" table) and turned off while debugging.

- "loss":    the loss straight from the hidden states, a chunk of tokens at a time (loss.py), instead of
             cross-entropy of the full logits;
- "rmsnorm": RMSNorm with a hand-written backward pass (layers.py) instead of autograd's chain of ops;
- "rope":    RoPE's rotation written in place, backward included (rope.py), instead of
             x * cos + rotate_half(x) * sin.

All three compute the same numbers as the formulas (tests/test_fast_paths.py). Under torch.compile every
switch reads off: the compiler fuses the plain formulas by itself.
"""
from __future__ import annotations

import contextlib

import torch

FAST_PATHS = {"loss": True, "rmsnorm": True, "rope": True}


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
