"""The two small building blocks of every MiniMind layer: RMSNorm and the SwiGLU feed-forward."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight. No mean subtraction and no bias, unlike LayerNorm.

    Computed in float32 whatever the input dtype, as transformers' Llama does.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The gate decides, per channel, how much of `up` passes."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.0):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fuse_projections(x, self.gate_proj, self.up_proj):
            # one matmul against [gate; up] instead of two (the stored weights stay two matrices)
            gate, up = F.linear(x, torch.cat((self.gate_proj.weight, self.up_proj.weight))).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.dropout(self.down_proj(F.silu(gate) * up))


# Fusing projections that read the same input (q/k/v; gate/up) concatenates their weights on every call.
# That copy pays when many tokens share it (training, prefill) and costs when a few do (decoding reads
# each weight once per token already), so it is used from this many tokens on.
FUSE_MIN_TOKENS = 64


def fuse_projections(x: torch.Tensor, *linears: nn.Module) -> bool:
    """True when x holds enough tokens and every projection is a plain nn.Linear without bias (a LoRA
    wrapper or a subclass computes something else, so it keeps its own forward)."""
    return (x.numel() // x.shape[-1] >= FUSE_MIN_TOKENS
            and all(type(m) is nn.Linear and m.bias is None for m in linears))
