"""Chapter 08, SFT: the masked loss, and a mean over tokens, not over conversations."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import exercise


@exercise("08.sft_loss", "shift as in pretraining (logits[:, :-1] against labels[:, 1:]) and pass "
                         "ignore_index=-100 to F.cross_entropy: the mean then runs over the learned tokens only")
def _check_sft(sft_loss):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 7, 9, generator=g), torch.randint(0, 9, (2, 7), generator=g)
    labels[0, :4], labels[1, :2] = -100, -100  # the prompts: not learned
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1), ignore_index=-100)
    got = torch.as_tensor(sft_loss(logits, labels), dtype=torch.float32)
    if not torch.isfinite(got):
        return "the loss is not finite: -100 is not a token id (pass ignore_index=-100)"
    if not torch.isclose(got, want, atol=1e-5):
        return f"{float(got):.4f}; expected {float(want):.4f} (is the mean over the learned tokens only?)"
    return None


@exercise("08.mean_over_tokens", "the loss is the sum over every learned token of the batch, divided by how many "
                                 "there are: each token counts once, whichever conversation it is in")
def _check_mean(answer):
    want = (10 * 1.0 + 90 * 2.0) / 100
    if not math.isclose(float(answer), want, abs_tol=1e-6):
        if math.isclose(float(answer), 1.5):
            return "1.5 is the mean of the two conversations' means: each conversation counted once"
        return f"{answer}; expected another value"
    return None
