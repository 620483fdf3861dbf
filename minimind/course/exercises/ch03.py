"""Chapter 03, attention: the causal formula, grouped-query heads, and one step with the KV cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import exercise


@exercise("03.causal_attention", "scores = q @ k.transpose(-2, -1) / sqrt(d); set scores above the diagonal to "
                                 "-inf (torch.triu(..., diagonal=1)); softmax over the last dim; then @ v")
def _check_attention(attention):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))  # (B, H, T, d)
    got, want = attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if tuple(got.shape) != tuple(want.shape):
        return f"the output has shape {tuple(got.shape)}; expected {tuple(want.shape)} (B, H, T, d)"
    k2, v2 = k.clone(), v.clone()
    k2[..., -1, :], v2[..., -1, :] = 5.0, 5.0  # change only the last token
    if not torch.allclose(attention(q, k2, v2)[..., 0, :], got[..., 0, :], atol=1e-5):
        return "the first token's output changes when only the last token does: it can see the future (the mask)"
    unscaled = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    if torch.allclose(got, unscaled, atol=1e-5):
        return "the scores are not divided by sqrt(d)"
    if not torch.allclose(got, want, atol=1e-5):
        return f"the outputs differ from PyTorch's by up to {(got - want).abs().max():.3g}"
    return None


@exercise("03.repeat_kv", "head h of the queries uses KV head h // n_rep: each KV head is repeated n_rep times in a "
                          "row (repeat_interleave on dim 1), not the whole set tiled")
def _check_repeat(repeat_kv):
    from ...model.attention import repeat_kv as reference
    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 2, 3, 4)  # (B, KV heads, T, d)
    for n_rep in (1, 3):
        got, want = repeat_kv(x, n_rep), reference(x, n_rep)
        if tuple(got.shape) != tuple(want.shape):
            return f"repeat_kv(x of shape {tuple(x.shape)}, {n_rep}) has shape {tuple(got.shape)}; expected " \
                   f"{tuple(want.shape)}"
        if not torch.equal(got, want):
            if torch.equal(got, x.repeat(1, n_rep, 1, 1)):
                return "the heads are tiled (KV head 0, 1, 0, 1, ...): query head 1 must share KV head 0"
            return f"repeat_kv(x, {n_rep}) differs from the expected heads"
    return None


@exercise("03.kv_cache_step", "append k_new and v_new to the caches along the time dim (torch.cat on dim 2); the new "
                              "token may look at every cached position and at itself, so no mask: softmax(q K^T / "
                              "sqrt(d)) V over the whole cache")
def _check_cache_step(step):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))  # (B, H, T, d): 6 tokens
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)     # every position, recomputed
    k_cache, v_cache = k[:, :, :5], v[:, :, :5]                          # the first 5, cached
    out, k_cache, v_cache = step(q[:, :, 5:], k_cache, v_cache, k[:, :, 5:], v[:, :, 5:])
    if tuple(k_cache.shape) != (1, 2, 6, 8) or tuple(v_cache.shape) != (1, 2, 6, 8):
        return f"the caches have shapes {tuple(k_cache.shape)} and {tuple(v_cache.shape)}; expected (1, 2, 6, 8) each"
    if not (torch.equal(k_cache, k) and torch.equal(v_cache, v)):
        return "the caches are not the old ones with the new key and value appended at the end"
    if tuple(out.shape) != (1, 2, 1, 8):
        return f"the output has shape {tuple(out.shape)}; expected (1, 2, 1, 8): one new token"
    if not torch.allclose(out, full[:, :, 5:], atol=1e-5):
        return "the new token's output differs from recomputing attention over the whole sequence"
    return None
