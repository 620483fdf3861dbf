"""Chapter 07, pretraining: the shifted loss, the learning-rate schedule, and gradient accumulation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import exercise


@exercise("07.next_token_loss", "the logits at position t predict token t + 1: compare logits[:, :-1] with "
                                "ids[:, 1:], flattened to (N, V) and (N,), with F.cross_entropy")
def _check_loss(next_token_loss):
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(2, 6, 11, generator=g), torch.randint(0, 11, (2, 6), generator=g)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    got = torch.as_tensor(next_token_loss(logits, ids), dtype=torch.float32)
    if torch.isclose(got, F.cross_entropy(logits.reshape(-1, 11), ids.reshape(-1)), atol=1e-5):
        return "position t is scored on token t itself: it must predict the next one, t + 1"
    if not torch.isclose(got, want, atol=1e-5):
        return f"{float(got):.4f}; expected {float(want):.4f}"
    return None


@exercise("07.lr_schedule", "before `warmup` steps: lr * (step + 1) / warmup; after: progress p = (step - warmup) / "
                            "(total - warmup), capped at 1, and lr goes from lr down to lr * min_ratio along "
                            "floor + (lr - floor) * (1 + cos(pi p)) / 2")
def _check_schedule(lr_at):
    from ...train.loop import TrainArgs
    from ...train.loop import lr_at as reference
    for total, lr, warmup, ratio in ((100, 1e-3, 10, 0.1), (50, 5e-4, 0, 0.1), (30, 2e-3, 5, 0.0)):
        args = TrainArgs(lr=lr, warmup_steps=warmup, min_lr_ratio=ratio)
        for step in range(total + 3):
            got, want = float(lr_at(step, total, lr, warmup, ratio)), reference(step, total, args)
            if abs(got - want) > 1e-12 + 1e-9 * want:
                return f"lr_at({step}, {total}, {lr}, {warmup}, {ratio}) = {got:.3g}; expected {want:.3g}"
    return None


@exercise("07.grad_accum", "each micro-batch's loss is a mean over its tokens; with the loss divided by the number "
                           "of micro-batches, two halves of equal size add up to the mean over the whole batch")
def _check_accum(answer):
    if str(answer).strip().lower() not in ("yes", "same", "the same", "equal"):
        return f"{answer!r}: compute both gradients on a small model and compare them"
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    F.cross_entropy(model(x), y).backward()
    whole = model.weight.grad.clone()
    model.zero_grad()
    for half in (slice(0, 8), slice(8, 16)):
        (F.cross_entropy(model(x[half]), y[half]) / 2).backward()
    assert torch.allclose(whole, model.weight.grad, atol=1e-6), "accumulation no longer matches"
    return None
