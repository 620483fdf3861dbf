"""Chapter 10, DPO: the loss from four log-probabilities, and where it starts."""
from __future__ import annotations

import math

import torch

from . import exercise


@exercise("10.dpo_loss", "each answer's implicit reward is beta * (log pi - log ref); the loss is "
                         "-log sigmoid(reward_chosen - reward_rejected), averaged over the pairs")
def _check_dpo(dpo_loss):
    from ...align.dpo import dpo_loss as reference
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 3 - 20 for _ in range(4))  # (B,) sequence log-probabilities
    got = torch.as_tensor(dpo_loss(pc, pr, rc, rr, 0.1), dtype=torch.float32)
    want = reference(pc, pr, rc, rr, 0.1)[0]
    swapped = reference(pr, pc, rr, rc, 0.1)[0]
    if torch.isclose(got, swapped, atol=1e-5):
        return "chosen and rejected are swapped: the loss falls as the chosen answer's reward rises above the other's"
    if not torch.isclose(got, want, atol=1e-5):
        return f"{float(got):.4f}; expected {float(want):.4f}"
    return None


@exercise("10.loss_at_start", "at the first step the policy is the reference: both rewards are 0, and -log sigmoid(0) "
                              "is log 2")
def _check_start(answer):
    if not math.isclose(float(answer), math.log(2), abs_tol=1e-3):
        return f"{float(answer):.4f}: what are both implicit rewards when the policy equals the reference?"
    return None
