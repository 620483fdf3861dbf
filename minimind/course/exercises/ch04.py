"""Chapter 04, RoPE: the rotation itself, scores that depend on distance only, and the slowest pair."""
from __future__ import annotations

import math

import torch

from . import exercise


def _rope(x, positions, theta):
    from ...model.rope import apply_rope, rope_cos_sin, rope_inv_freq
    cos, sin = rope_cos_sin(rope_inv_freq(x.shape[-1], theta), positions[None])  # (1, T, d)
    return apply_rope(x[None, None], cos, sin)[0, 0]


@exercise("04.rope", "pair channel i with channel i + d/2 (not 2i with 2i + 1); the pair turns by the angle "
                     "position * theta ** (-2i / d): (a, b) -> (a cos - b sin, b cos + a sin)")
def _check_rope(rope):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g)  # (T, d)
    positions = torch.arange(6)
    got, want = rope(x, positions, 10000.0), _rope(x, positions, 10000.0)
    if tuple(got.shape) != tuple(want.shape):
        return f"the output has shape {tuple(got.shape)}; expected {tuple(want.shape)}"
    if not torch.allclose(got[0], x[0], atol=1e-6):
        return "position 0 must stay as it is: its angle is 0"
    inter = x.reshape(6, 4, 2)  # the other layout: channels (2i, 2i + 1) as pairs
    cos, sin = _angles(positions, 8)
    adjacent = torch.stack([inter[..., 0] * cos - inter[..., 1] * sin, inter[..., 1] * cos + inter[..., 0] * sin],
                           -1).reshape(6, 8)
    if torch.allclose(got, adjacent, atol=1e-5):
        return "you rotate adjacent channels (2i, 2i + 1), as GPT-J does; Llama and MiniMind pair i with i + d/2"
    if not torch.allclose(got, want, atol=1e-5):
        return f"the rotated vectors differ from MiniMind's apply_rope by up to {(got - want).abs().max():.3g}"
    return None


def _angles(positions, d, theta=10000.0):
    inv = theta ** (-torch.arange(0, d, 2).float() / d)  # (d/2,)
    angles = positions.float()[:, None] * inv            # (T, d/2)
    return angles.cos(), angles.sin()


@exercise("04.relative", "rotate q by position m and k by n: the score q.k then depends on m - n only")
def _check_relative(answer):
    if str(answer).strip().lower() not in ("equal", "the same", "same"):
        return f"{answer!r}: try it (the chapter's cell 'The score depends only on the distance' does)"
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    s1 = (_rope(q, torch.tensor([5]), 10000.0) * _rope(k, torch.tensor([3]), 10000.0)).sum()
    s2 = (_rope(q, torch.tensor([105]), 10000.0) * _rope(k, torch.tensor([103]), 10000.0)).sum()
    assert torch.allclose(s1, s2, atol=1e-4), "RoPE no longer gives relative scores"
    return None


def longest_wavelength(preset: str = "tiny") -> float:
    """Tokens the slowest pair of the preset's RoPE takes to turn a full circle: 2 pi / its frequency."""
    from ...model.config import MiniMindConfig
    from ...model.rope import rope_inv_freq
    c = MiniMindConfig.from_preset(preset)
    return float(2 * math.pi / rope_inv_freq(c.head_dim, c.rope_theta).min())


@exercise("04.longest_wavelength", "the slowest pair has frequency theta ** (-(d - 2) / d) for head width d (the "
                                   "last pair); a full turn takes 2 pi / frequency positions")
def _check_wavelength(answer):
    want = longest_wavelength()
    if not math.isclose(float(answer), want, rel_tol=0.01):
        longer = "longer" if want > float(answer) else "shorter"
        return f"{float(answer):,.0f} tokens; the slowest pair's turn is {longer}"
    return None
