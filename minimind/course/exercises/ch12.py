"""Chapter 12, distillation: the KD loss, and what the temperature does to the teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import exercise


@exercise("12.kd_loss", "soften both with the temperature (log_softmax(logits / T)), take KL(teacher || student) "
                        "with F.kl_div(student, teacher, log_target=True, reduction='batchmean'), multiply by T ** 2; "
                        "then alpha * CE(student, targets) + (1 - alpha) * that")
def _check_kd(kd_loss):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(20, 7, generator=g), torch.randn(20, 7, generator=g) * 2  # (N, V)
    targets = torch.randint(0, 7, (20,), generator=g)
    for alpha, t in ((0.5, 1.0), (0.3, 2.0)):
        kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                      reduction="batchmean") * t ** 2
        want = alpha * F.cross_entropy(student, targets) + (1 - alpha) * kl
        got = torch.as_tensor(kd_loss(student, teacher, targets, alpha, t), dtype=torch.float32)
        if not torch.isclose(got, want, atol=1e-5):
            if t != 1.0 and torch.isclose(got, want - (1 - alpha) * kl * (1 - 1 / t ** 2), atol=1e-5):
                return "at T = 2 the KL term is missing its T ** 2 (it keeps the gradients' size across temperatures)"
            return f"alpha {alpha}, T {t}: {float(got):.4f}; expected {float(want):.4f}"
    return None


@exercise("12.softer", "dividing the logits by T > 1 shrinks their differences, so the softmax spreads out")
def _check_softer(answer):
    if str(answer).strip().lower() not in ("lower", "smaller", "down"):
        return f"{answer!r}: compare softmax(logits) and softmax(logits / 4) for some logits"
    logits = torch.tensor([3.0, 1.0, 0.2])
    assert F.softmax(logits / 4, -1).max() < F.softmax(logits, -1).max()
    return None
