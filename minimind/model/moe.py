"""Mixture of experts: a router sends each token to its top-k of n routed experts, plus shared experts
that every token uses. Only k/n of the routed weights work per token, so parameters grow faster than
compute. A load-balancing loss keeps the router from collapsing onto a few experts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FeedForward


def load_balancing_loss(probs: torch.Tensor, topk_idx: torch.Tensor, n_experts: int,
                        alpha: float) -> torch.Tensor:
    """MiniMind's sequence-level auxiliary loss, alpha * sum_i f_i * P_i averaged over sequences.

    probs: (batch, seq, n_experts) router probabilities; topk_idx: (batch, seq, k) chosen experts.
    f_i is expert i's share of the sequence's k*seq assignments times n_experts (1 when balanced) and
    P_i its mean probability. A uniform router (P_i = 1/n) gives exactly alpha, whatever it picks; a
    router collapsed onto one expert gives alpha * n_experts.
    """
    b, t, k = topk_idx.shape
    counts = torch.zeros(b, n_experts, device=probs.device, dtype=probs.dtype)  # (B, n): picks per expert
    counts.scatter_add_(1, topk_idx.reshape(b, t * k), torch.ones(b, t * k, device=probs.device,
                                                                 dtype=probs.dtype))
    f = counts / (t * k / n_experts)                          # (B, n)
    return alpha * (f * probs.mean(dim=1)).sum(dim=1).mean()  # P_i = probs.mean(dim=1): (B, n)


def route(logits: torch.Tensor, top_k: int, temperature: float = 1.0, normalize: bool = True):
    """Router logits (tokens, n) -> probs = softmax(logits / temperature) (tokens, n), and each token's
    top_k experts (tokens, k) with their weights, renormalised to sum to 1 when `normalize` (with k = 1 the
    one expert then gets weight 1, as in minimind-3 and Qwen3-MoE; MiniMind2 never renormalised k = 1)."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    weights, idx = probs.topk(top_k, dim=-1)  # (tokens, k) each
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, idx


class MoEFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.alpha = config.aux_loss_alpha
        h, i = config.hidden_size, config.moe_intermediate_size
        self.gate = nn.Linear(h, self.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(FeedForward(h, i, config.dropout) for _ in range(self.n_experts))
        self.shared_experts = nn.ModuleList(FeedForward(h, i, config.dropout)
                                            for _ in range(config.n_shared_experts))
        self.aux_loss = torch.tensor(0.0)
        self.last_topk_idx = None  # kept for the routing pictures of chapter 06

    def route(self, x: torch.Tensor):
        """Router probabilities (tokens, n) and the top-k experts with their weights (tokens, k)."""
        probs, weights, idx = route(self.gate(x), self.top_k, normalize=self.norm_topk_prob)
        return probs, weights.to(x.dtype), idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        flat = x.reshape(-1, h)                 # (N, h), N = B * T tokens
        probs, weights, idx = self.route(flat)  # (N, n_experts); (N, k) and (N, k)
        self.last_topk_idx = idx.view(b, t, self.top_k).detach()
        self.aux_loss = load_balancing_loss(probs.view(b, t, -1), idx.view(b, t, -1), self.n_experts,
                                            self.alpha)
        # Dispatch by expert: sort the (token, slot) assignments so each expert runs once on exactly the
        # tokens routed to it, then scatter the weighted outputs back.
        out = torch.zeros_like(flat)                  # (N, h)
        assignment = idx.reshape(-1)                  # (N * k,): slot j is token j // k's choice number j % k
        order = assignment.argsort()                  # (N * k,): the slots grouped by expert, expert 0 first
        counts = torch.bincount(assignment, minlength=self.n_experts).tolist()  # slots per expert
        token_of = order // self.top_k                # (N * k,): the token of each sorted slot
        weight_of = weights.reshape(-1)[order, None]  # (N * k, 1): its routing weight
        start = 0
        for expert, count in zip(self.experts, counts):
            if count:  # this expert's slots are order[start:start + count]
                tokens = token_of[start:start + count]  # (count,)
                # (count, h) expert outputs, weighted, added into their tokens' rows
                out.index_add_(0, tokens, expert(flat[tokens]) * weight_of[start:start + count])
            start += count
        for shared in self.shared_experts:
            out = out + shared(flat)
        return out.view(b, t, h)
