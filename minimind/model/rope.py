"""Rotary position embeddings (RoPE) and YaRN scaling for longer contexts.

RoPE rotates each pair of query/key channels by an angle proportional to the token's position, so q_m . k_n
depends only on m - n; YaRN stretches the slow channels so that a model trained on short contexts works on
long ones. The arithmetic is transformers' Llama's (rotate_half layout, float32 angles): same logits.
"""
from __future__ import annotations

import math

import torch


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """The angular speed of each channel pair: theta^(-2i/d), fast for early pairs, slow for late ones."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def yarn_inv_freq(head_dim: int, theta: float, factor: float, original_max_position_embeddings: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, attention_factor: float | None = None):
    """YaRN (Peng et al. 2023): interpolate slow channels by `factor`, keep fast ones, ramp in between.

    Returns (inv_freq, attention_factor); cos and sin are multiplied by attention_factor (0.1 ln s + 1).
    """
    def correction_dim(num_rotations):
        # the channel whose wavelength fits `num_rotations` times into the original context
        return head_dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (
            2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp  # 1: keep the channel as trained, 0: interpolate it
    pos_freqs = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, attention_factor


def inv_freq_for(config) -> tuple[torch.Tensor, float]:
    scaling = config.rope_scaling
    if not scaling:
        return rope_inv_freq(config.head_dim, config.rope_theta), 1.0
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "yarn":
        raise ValueError(f"rope_scaling type {kind!r} is not supported; use None or {{'rope_type': 'yarn', ...}}")
    return yarn_inv_freq(config.head_dim, config.rope_theta, float(scaling["factor"]),
                         int(scaling.get("original_max_position_embeddings") or config.max_position_embeddings),
                         float(scaling.get("beta_fast") or 32.0), float(scaling.get("beta_slow") or 1.0),
                         scaling.get("attention_factor"))


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, attention_factor: float = 1.0):
    """cos and sin of shape positions.shape + (head_dim,), laid out [pairs..., pairs...] as in Llama."""
    angles = positions.float()[..., None] * inv_freq   # (B, T, head_dim/2)
    emb = torch.cat((angles, angles), dim=-1)          # (B, T, head_dim): channel i and i + d/2 share an angle
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim: the pair (i, i + d/2) turned by 90 degrees."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1) -> torch.Tensor:
    """Rotate x (B, n_heads, T, head_dim) by cos/sin of shape (B, T, head_dim):
    x * cos + rotate_half(x) * sin in x's dtype, as transformers' Llama does when cos and sin are in it too.

    unsqueeze_dim=2 takes x as (B, T, n_heads, head_dim) instead (the layout straight out of q_proj).
    """
    # (B, 1, T, head_dim) or (B, T, 1, head_dim): one angle per position, shared by every head
    cos, sin = cos.unsqueeze(unsqueeze_dim).to(x.dtype), sin.unsqueeze(unsqueeze_dim).to(x.dtype)
    return x * cos + rotate_half(x) * sin
