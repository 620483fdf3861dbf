"""Causal self-attention with grouped-query heads (GQA) and a KV cache.

Two paths give the same numbers: `explicit_attention`, the matmul/softmax of chapter 03, and PyTorch's fused
`F.scaled_dot_product_attention` (SDPA), which training and generation use by default.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RMSNorm
from .rope import apply_rope


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that decoding one more token costs
    one token's work instead of re-running the whole prefix.

    Each layer's keys and values live in a buffer with room to spare (grown `chunk` tokens at a time), so
    appending a token writes one slot instead of copying the whole cache as torch.cat would; `keys[l]` and
    `values[l]` are views of the filled part, (batch, kv_heads, tokens, head_dim).
    """

    def __init__(self, num_layers: int, chunk: int = 256):
        self.chunk = chunk
        self._k: list[Optional[torch.Tensor]] = [None] * num_layers
        self._v: list[Optional[torch.Tensor]] = [None] * num_layers
        self._len = [0] * num_layers

    @property
    def keys(self) -> list[Optional[torch.Tensor]]:
        return [None if k is None else k[:, :, :n] for k, n in zip(self._k, self._len)]

    @property
    def values(self) -> list[Optional[torch.Tensor]]:
        return [None if v is None else v[:, :, :n] for v, n in zip(self._v, self._len)]

    def __len__(self) -> int:  # tokens cached
        return self._len[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append k, v (batch, kv_heads, new, head_dim) to `layer`; return all of its keys and values."""
        n, t = self._len[layer], k.shape[2]
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or n + t > buf_k.shape[2]:  # grow: room for this step and the next `chunk` tokens
            size = n + t + self.chunk
            new_k = k.new_empty(k.shape[0], k.shape[1], size, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], size, v.shape[3])
            if n:
                new_k[:, :, :n] = buf_k[:, :, :n]
                new_v[:, :, :n] = buf_v[:, :, :n]
            self._k[layer], self._v[layer] = buf_k, buf_v = new_k, new_v
        buf_k[:, :, n:n + t] = k
        buf_v[:, :, n:n + t] = v
        self._len[layer] = n + t
        return buf_k[:, :, :n + t], buf_v[:, :, :n + t]

    def expand(self, batch: int) -> "KVCache":
        """A cache of one row (a shared prompt) repeated for `batch` rows: views of this one, so nothing is copied
        until the rows append their own tokens, and gradients from every row flow back into the one prompt."""
        out = KVCache(len(self._k), self.chunk)
        out._k = [None if k is None else k[:, :, :n].expand(batch, -1, -1, -1) for k, n in zip(self._k, self._len)]
        out._v = [None if v is None else v[:, :, :n].expand(batch, -1, -1, -1) for v, n in zip(self._v, self._len)]
        out._len = list(self._len)
        return out

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in `index` (e.g. after some sequences finished)."""
        self._k = [k[index] if k is not None else None for k in self._k]
        self._v = [v[index] if v is not None else None for v in self._v]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, d) -> (batch, kv_heads * n_rep, seq, d): each KV head serves n_rep queries."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def explicit_attention(q, k, v, mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                       return_weights: bool = False):
    """softmax(q k^T / sqrt(d) + mask) v, written out. q: (B, H, Tq, d); k, v: (B, H, Tk, d).

    mask is boolean, True where a query may look (broadcast to (B, H, Tq, Tk)).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if is_causal:
        tq, tk = q.shape[-2], k.shape[-2]
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)  # query i sees keys 0..tk-tq+i
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, Tq, Tk), each row sums to 1
    out = weights @ v                                         # (B, H, Tq, d)
    return (out, weights) if return_weights else out


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.explicit = config.explicit_attention
        self.dropout = config.dropout
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)
        # minimind-3/Qwen3: normalising each head's q and k bounds the attention logits q.k, which keeps
        # softmax from saturating as weights grow (one weight per head channel, shared by the heads)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def project_qk(self, x, cos, sin):
        """q (B, n_heads, T, head_dim) and k (B, n_kv_heads, T, head_dim): projected, q/k-normed, rotated."""
        b, t, _ = x.shape
        # on the (batch, seq, heads, head_dim) layout the projections give; then heads first for SDPA
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, cos, sin, unsqueeze_dim=2).transpose(1, 2)
        k = apply_rope(k, cos, sin, unsqueeze_dim=2).transpose(1, 2)
        return q, k

    def forward(self, x, cos, sin, mask: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None):
        b, t, _ = x.shape  # x: (B, T, hidden); cos, sin: (B, T, head_dim)
        q, k = self.project_qk(x, cos, sin)  # (B, n_heads, T, head_dim), (B, n_kv_heads, T, head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # like k
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, n_kv_heads, past + T, head_dim)
        # no mask and a square score matrix: the plain causal case, which SDPA handles fastest
        is_causal = mask is None and t == k.shape[2] and t > 1
        n_rep = self.n_heads // self.n_kv_heads
        if self.explicit:
            out = explicit_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask, is_causal)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=n_rep > 1)
        # out: (B, n_heads, T, head_dim) -> (B, T, n_heads * head_dim), the heads side by side
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def build_attention_mask(attention_mask: Optional[torch.Tensor], q_len: int, kv_len: int,
                         device) -> Optional[torch.Tensor]:
    """Boolean (B, 1, q_len, kv_len) mask: causal over absolute positions and blind to padding.

    Returns None for the common unpadded cases (causal square or a single new token), which SDPA
    handles without a mask.
    """
    if attention_mask is None and (q_len == kv_len or q_len == 1):
        return None
    past = kv_len - q_len
    causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(past)[None, None]
    if attention_mask is None:
        return causal
    mask = causal & attention_mask[:, None, None, :kv_len].bool()
    # a padded query row would see nothing (and softmax of all -inf is NaN): let it see everything;
    # its output is never used
    return mask | ~mask.any(dim=-1, keepdim=True)


@torch.no_grad()
def attention_weights(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                      ) -> torch.Tensor:
    """The softmax weights of every layer and head, (layers, batch, heads, seq, seq), for a heatmap.

    Runs the model once (no cache) and, at each attention layer, recomputes q and k from that layer's
    own input with `explicit_attention(..., return_weights=True)`; the model's outputs are untouched.
    """
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError("attention_weights needs a model built from minimind.model.attention.Attention layers")
    weights: list[torch.Tensor] = []

    def hook(module, args, kwargs, output):
        x, cos, sin = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("mask")
        t = x.shape[1]
        q, k = module.project_qk(x, cos, sin)
        k = repeat_kv(k, module.n_heads // module.n_kv_heads)
        _, w = explicit_attention(q, k, k, mask, is_causal=mask is None and t > 1, return_weights=True)
        weights.append(w.float())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in layers]
    try:
        model(input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(weights)
