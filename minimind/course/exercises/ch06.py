"""Chapter 06, mixture of experts: top-k routing, the balancing loss, and what temperature does not do."""
from __future__ import annotations

import torch

from . import exercise


@exercise("06.route", "probs = softmax(logits, -1); weights, idx = probs.topk(k, -1); then divide the weights by "
                      "their sum over the k chosen experts")
def _check_route(top_k_route):
    from ...model.moe import route
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, generator=g)  # (tokens, experts)
    weights, idx = top_k_route(logits, 2)
    _, want_w, want_idx = route(logits, 2)
    if tuple(idx.shape) != (10, 2):
        return f"idx has shape {tuple(idx.shape)}; expected (10, 2): each token's 2 experts"
    if not torch.equal(idx.sort(-1).values, want_idx.sort(-1).values):
        return "some tokens go to other experts: take the top k of the probabilities"
    if not torch.allclose(weights.sum(-1), torch.ones(10), atol=1e-5):
        return "a token's weights do not sum to 1: renormalise over the chosen experts"
    if not torch.allclose(weights, want_w, atol=1e-5):
        return "the weights differ from route()'s (are they in the same order as idx?)"
    return None


@exercise("06.aux_loss", "f_i: expert i's share of the k * T picks in a sequence, times n (1 when even); P_i: its "
                         "mean probability over the sequence; loss = alpha * sum_i f_i * P_i, averaged over sequences")
def _check_aux(aux_loss):
    from ...model.moe import load_balancing_loss
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 7, 4, generator=g), -1)  # (B, T, n)
    idx = probs.topk(2, -1).indices                               # (B, T, k)
    got, want = aux_loss(probs, idx, 4, 0.1), load_balancing_loss(probs, idx, 4, 0.1)
    uniform = torch.full((3, 7, 4), 0.25)
    if not torch.allclose(torch.as_tensor(got, dtype=torch.float32), want, atol=1e-5):
        return f"{float(got):.5f}; expected {float(want):.5f}"
    if not torch.isclose(torch.as_tensor(aux_loss(uniform, idx, 4, 0.1), dtype=torch.float32), torch.tensor(0.1)):
        return "a uniform router must give exactly alpha, whatever it picks"
    return None


@exercise("06.temperature", "softmax(logits / T) keeps the order of the logits for any T > 0, and top-k reads only "
                            "the order")
def _check_temperature(answer):
    from ...model.moe import route
    if str(answer).strip().lower() not in ("no", "same", "the same", "unchanged"):
        return f"{answer!r}: route some logits at T = 1 and T = 5 and compare the chosen experts"
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(route(logits, 2)[2], route(logits, 2, temperature=5.0)[2]), "temperature moved the experts"
    return None
