"""Chapter 11, RL: GRPO's advantages, the k3 KL estimate, and PPO's clip."""
from __future__ import annotations

import math

import torch

from . import exercise


@exercise("11.grpo_advantages", "reshape the rewards to (groups, group_size); subtract each group's mean and divide "
                                "by its standard deviation (torch.std, unbiased) + eps; a group whose rewards are all "
                                "equal gets 0")
def _check_grpo(grpo_advantages):
    from ...align.rl import grpo_advantages as reference
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    got, want = grpo_advantages(rewards, 4), reference(rewards, 4)[0]
    got = torch.as_tensor(got, dtype=torch.float32).reshape(-1)
    if got.shape != want.shape:
        return f"{tuple(got.shape)} advantages for 12 rewards; expected one each"
    if not torch.isfinite(got).all() or got[4:8].abs().max() > 1e-6:
        return "the all-correct group (rewards 4 to 7) must get advantage 0: there is nothing to tell apart"
    if not torch.allclose(got, want, atol=1e-4):
        return f"{[round(x, 3) for x in got.tolist()]}; expected {[round(x, 3) for x in want.tolist()]}"
    return None


@exercise("11.k3", "with d = log ref - log pi, k3 is exp(d) - d - 1: never negative, and 0 when the two agree")
def _check_k3(k3):
    from ...align.rl import k3_kl
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(50, generator=g) * 4, -torch.rand(50, generator=g) * 4
    got = torch.as_tensor(k3(logp, ref), dtype=torch.float32)
    if (got < -1e-7).any():
        return "some estimates are negative: that is k1 (log pi - log ref); k3 adds exp(d) - 1 to make it never so"
    if not torch.allclose(got, k3_kl(logp, ref), atol=1e-5):
        return "the estimates differ from k3_kl (which way round is d?)"
    return None


@exercise("11.clipped_gradient", "with A > 0, PPO's loss is -min(r A, clip(r, 1 - eps, 1 + eps) A): above 1 + eps the "
                                 "clipped term is the smaller one, and it does not depend on r")
def _check_clip(answer):
    from ...align.rl import ppo_policy_loss
    logp = torch.tensor([[math.log(1.3)]], requires_grad=True)
    ppo_policy_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip=0.2)[0].backward()
    if not math.isclose(float(answer), logp.grad.item(), abs_tol=1e-6):
        return f"{answer}: the ratio 1.3 is past 1 + eps = 1.2 in the direction A pushes it"
    return None
