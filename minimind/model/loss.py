"""Next-token cross-entropy straight from the hidden states, a chunk of tokens at a time, never building the
full (tokens x vocab) logits: the same loss and gradients as `F.cross_entropy(lm_head(h), targets)` with
a fraction of the memory traffic, and ignored (-100) rows never reach the output head. Liger Kernel calls
this "fused linear cross entropy"; the plain formula runs under `torch.compile`, which fuses it itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.datasets import IGNORE_INDEX


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels aligned with the inputs -> (B, T) targets: position t is scored on token t + 1, the
    last position on nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def chunk_rows(vocab_size: int, device: torch.device) -> int:
    """Rows per chunk: about 4 MB of float32 logits on a CPU (a core's L2 cache holds it), 256 MB on a GPU
    (where fewer, larger matmuls keep the device busy)."""
    elements = 2 ** 20 if device.type == "cpu" else 2 ** 26
    return max(1, elements // vocab_size)


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    # under autocast the matmuls run in its dtype (bf16 on a GPU), as nn.Linear would
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight.T) against targets (none ignored), its gradients computed
    in the forward pass chunk by chunk, while the chunk's logits are hot in the cache:

        for each chunk of rows:  logits = h_c W^T,  loss_c = logsumexp(logits) - logits[target]
                                 d logits = softmax(logits) - onehot(target)
                                 d h_c = d logits @ W,  d W += d logits^T h_c

    so the backward pass only scales the two stored gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows_per_chunk):
        dtype = _compute_dtype(hidden.device, weight.dtype)
        acc = torch.promote_types(dtype, torch.float32)  # softmax and sums: float32 at least
        scale = 1.0 / targets.shape[0]                   # the mean's 1/n, folded into the matmuls below
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)                         # (N, H), (V, H)
            grad_h = torch.empty_like(hidden) if want_h else None             # (N, H)
            grad_w = torch.empty_like(weight, dtype=acc) if want_w else None  # (V, H)
            total = torch.zeros((), dtype=acc, device=hidden.device)
            for start in range(0, h.shape[0], rows_per_chunk):
                # h_c: (C, H) for a chunk of C rows; t_c: (C, 1)
                h_c, t_c = h[start:start + rows_per_chunk], targets[start:start + rows_per_chunk, None]
                log_probs = torch.log_softmax((h_c @ w.t()).to(acc), dim=-1)  # (C, V): only this chunk's exist
                total -= log_probs.gather(1, t_c).sum()
                grad = log_probs.exp_()                                    # softmax, in place
                grad.scatter_add_(1, t_c, grad.new_full(t_c.shape, -1.0))  # minus the one-hot target
                grad = grad.to(dtype)  # (C, V): d loss_c / d logits
                if want_h:  # d h = scale * grad @ W, written into its rows
                    rows = grad_h[start:start + rows_per_chunk]
                    if rows.dtype == dtype:
                        torch.addmm(rows, grad, w, beta=0.0, alpha=scale, out=rows)
                    else:
                        rows.copy_(grad @ w).mul_(scale)
                if want_w:  # d W += scale * grad^T @ h (beta=0 on the first chunk: no zero-filling)
                    beta = 0.0 if start == 0 else 1.0
                    if dtype == acc:
                        grad_w.addmm_(grad.t(), h_c, beta=beta, alpha=scale)
                    elif start == 0:
                        torch.mul((grad.t() @ h_c).to(acc), scale, out=grad_w)
                    else:
                        grad_w.add_((grad.t() @ h_c).to(acc), alpha=scale)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        if grad_w is not None:
            grad_w = grad_w.to(ctx.weight_dtype)
        # a plain loss.backward() sends 1: the stored gradients are the answer (on a CPU, reading the
        # scalar is free; on a GPU it would wait for the device, so multiply there)
        if grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
            return grad_h, grad_w, None, None
        return (None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
                None if grad_w is None else grad_w * grad_loss.to(grad_w.dtype), None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, rows_per_chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits `hidden @ weight.T` against `targets`, positions equal to
    `ignore_index` left out; equal to `F.cross_entropy(F.linear(hidden, weight), targets)`, value and
    gradients, without materialising the logits. hidden: (..., H), weight: (vocab, H), targets: (...).

    A batch with no target at all gives 0 (F.cross_entropy gives NaN, which would poison the weights).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, H), N tokens
    targets = targets.reshape(-1)                  # (N,)
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"linear_cross_entropy: {hidden.shape[0]} hidden rows but {targets.shape[0]} targets")
    keep = targets != ignore_index
    if not bool(keep.all()):  # drop ignored rows before the output head (one host sync)
        rows = keep.nonzero().squeeze(1)
        hidden, targets = hidden.index_select(0, rows), targets.index_select(0, rows)  # (N_kept, H), (N_kept,)
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    rows_per_chunk = rows_per_chunk or chunk_rows(weight.shape[0], hidden.device)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, rows_per_chunk)
    # no gradients wanted (evaluation): the same mean, chunk by chunk
    dtype = _compute_dtype(hidden.device, weight.dtype)
    acc = torch.promote_types(dtype, torch.float32)
    h, w = hidden.to(dtype), weight.to(dtype)  # cast once, not per chunk
    total = sum(F.cross_entropy(F.linear(h[s:s + rows_per_chunk], w).to(acc), targets[s:s + rows_per_chunk],
                                reduction="sum")
                for s in range(0, h.shape[0], rows_per_chunk))
    return total / targets.shape[0]
