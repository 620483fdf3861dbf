"""Rotary position embeddings (RoPE) and YaRN scaling for longer contexts.

RoPE rotates each pair of query/key channels by an angle proportional to the token's position, so the
dot product q_m . k_n depends only on m - n. YaRN stretches the slow (low-frequency) channels so that a
model trained on short contexts keeps working on long ones. The arithmetic follows transformers'
Llama exactly (rotate_half layout, float32 angles) so that exported checkpoints give the same logits.
"""
from __future__ import annotations

import math

import torch

from . import fast


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
    angles = positions.float()[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1) -> torch.Tensor:
    """Rotate x (batch, heads, seq, head_dim) by cos/sin of shape (batch, seq, head_dim):
    x * cos + rotate_half(x) * sin.

    unsqueeze_dim=2 takes x as (batch, seq, heads, head_dim) instead (the layout straight out of q_proj).
    """
    cos, sin = cos.unsqueeze(unsqueeze_dim).to(x.dtype), sin.unsqueeze(unsqueeze_dim).to(x.dtype)
    # the fast rotation pays in training, where its backward pass saves the most; without a backward pass
    # (generation, evaluation) the formula is as fast and rounds exactly as transformers' Llama does
    if not (fast.use("rope") and torch.is_grad_enabled() and x.requires_grad):
        return x * cos + rotate_half(x) * sin
    half = x.shape[-1] // 2  # cos and sin repeat their first half (rope_cos_sin), so half of each will do
    return _Rotate.apply(x, cos[..., :half], sin[..., :half])


class _Rotate(torch.autograd.Function):
    """x * cos + rotate_half(x) * sin without building rotate_half(x): each half of the output is written
    in place from the two halves of x (x1 c - x2 s, x2 c + x1 s), two passes instead of five. A rotation's
    gradient is the rotation by minus the angle, so the backward pass is the same function with -sin."""

    @staticmethod
    def forward(ctx, x, cos_half, sin_half):
        ctx.save_for_backward(cos_half, sin_half)
        return _Rotate.rotate(x, cos_half, sin_half, 1.0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        cos_half, sin_half = ctx.saved_tensors
        return _Rotate.rotate(grad, cos_half, sin_half, -1.0), None, None

    @staticmethod
    def rotate(x, c, s, sign: float):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        out1, out2 = out[..., :half], out[..., half:]
        torch.mul(x1, c, out=out1).addcmul_(x2, s, value=-sign)
        torch.mul(x2, c, out=out2).addcmul_(x1, s, value=sign)
        return out
