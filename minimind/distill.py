"""Knowledge distillation: the student learns from the teacher's whole next-token distribution, not only
from the one correct token. Loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T), over the
positions that have a label (assistant tokens in SFT data). T softens both distributions; T^2 keeps the
gradient scale comparable across temperatures (Hinton et al., 2015).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits, teacher_logits, labels, alpha: float = 0.5, temperature: float = 1.0):
    """Returns (loss, ce, kl). Logits (B, T, V) predict the next token; labels (B, T) as in the model."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)
    keep = targets != -100
    s = student_logits.reshape(-1, student_logits.size(-1))[keep].float()
    t = teacher_logits.reshape(-1, teacher_logits.size(-1))[keep].float()
    ce = F.cross_entropy(s, targets[keep])
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature ** 2
    return alpha * ce + (1 - alpha) * kl, ce, kl
