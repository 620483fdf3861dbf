"""DPO (Rafailov et al., 2023): learn from preference pairs without a reward model or sampling (chapter 10).

loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)))), ref frozen.
A batch holds the B chosen sequences, then the B rejected ones (`preference_collate`): one forward scores both.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.datasets import IGNORE_INDEX, pad_sequences
from ..train.stages import Stage, option, register


# --------------------------------------------------------------------------------------------------
# The math, as small functions
# --------------------------------------------------------------------------------------------------
def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position, (B, T), from logits (B, T, V); targets of -100 get 0.
    (As -cross_entropy: no full-vocabulary log-softmax copy of the logits.)"""
    logp = -F.cross_entropy(logits.flatten(0, 1).float(), targets.clamp(min=0).reshape(-1), reduction="none")  # (B*T,)
    return logp.view(targets.shape) * (targets != IGNORE_INDEX)  # (B, T)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """log p(answer) per sequence, (B,). labels (B, T) align with the input ids (-100 on prompt and padding):
    logits[:, t] predict labels[:, t + 1]. average=True: per labelled token (MiniMind; the paper sums)."""
    targets = labels[:, 1:]  # (B, T-1)
    logp = token_logprobs(logits[:, :-1], targets).sum(-1)  # (B, T-1, V) -> (B, T-1) -> (B,)
    if average:
        logp = logp / (targets != IGNORE_INDEX).sum(-1).clamp(min=1)
    return logp


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1):
    """(loss, chosen_rewards, rejected_rewards): the mean DPO loss and each pair's implicit rewards."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)  # (B,)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()  # scalar; log 2 while policy == ref
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


# --------------------------------------------------------------------------------------------------
# Batches: chosen first, rejected after
# --------------------------------------------------------------------------------------------------
def _trimmed(ids, labels, pad_id: int):
    """Drop trailing padding (a dataset may pad every item to max_len; the batch needs only its longest)."""
    ids, labels = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)
    real = (ids != pad_id).nonzero()
    n = int(real[-1]) + 1 if len(real) else 1
    return ids[:n], labels[:n]


def preference_collate(items: list[dict], pad_id: int = 0) -> dict:
    """Items with chosen_/rejected_ input_ids and labels -> one right-padded batch of 2B rows: the B chosen
    sequences, then the B rejected ones. attention_mask marks the real tokens."""
    seqs = [_trimmed(it[f"{side}_input_ids"], it[f"{side}_labels"], pad_id)
            for side in ("chosen", "rejected") for it in items]
    input_ids, mask = pad_sequences([ids for ids, _ in seqs], pad_id)  # (2B, T)
    labels, _ = pad_sequences([lab for _, lab in seqs], IGNORE_INDEX)  # (2B, T)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the model in eval mode with no gradients: the reference policy."""
    ref = copy.deepcopy(model)
    return ref.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
@register
@dataclass
class DPOStage(Stage):
    """DPO against a frozen copy of the starting (SFT) model, made in setup(): a resumed run must start from the
    same --init. Metrics: implicit rewards, their margin and accuracy (chosen > rejected), the policy's log-probs."""
    name, help, data = "dpo", "direct preference optimisation on chosen/rejected pairs", "dpo"
    defaults = dict(lr=2e-4, warmup_steps=5, batch_size=8)
    beta: float = option(0.1, "dpo: preference temperature")
    average_logprobs: bool = option(False, "dpo: average answer log-probs over tokens (MiniMind) instead of "
                                           "summing (the paper)", lambda v: v.lower() in ("1", "true"))
    reference: Any = None  # the frozen reference (default: a copy of the model, made in setup)

    @staticmethod
    def collate_fn(items):
        return preference_collate(items)

    def setup(self, model, device):
        if self.reference is None:
            self.reference = frozen_copy(model)
        self.reference.to(device).eval().requires_grad_(False)

    def loss(self, model, batch):
        # right padding needs no attention mask: causal attention never looks right, labels skip the pads
        out = model(batch["input_ids"])  # logits (2B, T, V)
        logps = sequence_logprobs(out.logits, batch["labels"], self.average_logprobs)  # log pi(y | x), (2B,)
        with torch.no_grad():  # log ref(y | x), (2B,)
            ref_logps = sequence_logprobs(self.reference(batch["input_ids"]).logits, batch["labels"],
                                          self.average_logprobs)
        policy_chosen, policy_rejected = logps.chunk(2)  # (B,) each
        ref_chosen, ref_rejected = ref_logps.chunk(2)  # (B,) each
        # -log sigmoid(beta (log pi/ref(y_w | x) - log pi/ref(y_l | x))); beta log pi/ref: the implicit reward
        loss, chosen_r, rejected_r = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)
        return out.with_aux(loss), {"reward_chosen": chosen_r.mean(), "reward_rejected": rejected_r.mean(),
                      "reward_margin": (chosen_r - rejected_r).mean(),
                      "reward_accuracy": (chosen_r > rejected_r).float().mean(),
                      "logp_chosen": policy_chosen.detach().mean(), "logp_rejected": policy_rejected.detach().mean()}


def preference_accuracy(model, reference, items, beta: float = 0.1, batch_size: int = 16,
                        average_logprobs: bool = False) -> dict:
    """Implicit-reward accuracy and mean margin of `model` against `reference` over preference items
    (held-out pairs, say): the number chapter 10 reports before and after DPO."""
    margins = implicit_margins(pair_logprobs(model, items, batch_size, average_logprobs),
                               pair_logprobs(reference, items, batch_size, average_logprobs), beta)
    return {"accuracy": (margins > 0).float().mean().item(), "margin": margins.mean().item(), "pairs": len(margins)}


def implicit_margins(policy, reference, beta: float) -> torch.Tensor:
    """beta * ((log p_c - log ref_c) - (log p_r - log ref_r)) from (chosen, rejected) log-prob pairs."""
    (pc, pr), (rc, rr) = policy, reference
    return beta * ((pc - rc) - (pr - rr))


@torch.no_grad()
def pair_logprobs(model, items, batch_size: int = 16, average_logprobs: bool = False):
    """(chosen, rejected): log p(answer) under `model` for every preference item, two tensors (N,) on the CPU.
    Without a reference this is the model's own ranking: does it already find the chosen answer likelier?"""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(items), batch_size):
        batch = preference_collate([items[i] for i in range(start, min(start + batch_size, len(items)))])
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        c, r = sequence_logprobs(model(ids).logits, labels, average_logprobs).chunk(2)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def preference_callback(reference, items, beta: float = 0.1, average_logprobs: bool = False):
    """A train() callback: held-out preference accuracy and mean margin of the policy against `reference`
    (the SFT model) at every eval point, logged as val_reward_accuracy and val_reward_margin."""
    ref = pair_logprobs(reference, items, average_logprobs=average_logprobs)

    def callback(step, model):
        margins = implicit_margins(pair_logprobs(model, items, average_logprobs=average_logprobs), ref, beta)
        return {"val_reward_accuracy": (margins > 0).float().mean().item(),
                "val_reward_margin": margins.mean().item()}
    return callback


def reply_side(reply: str, chosen: str, rejected: str) -> str:
    """"chosen" or "rejected": which of the pair's two answers a generated reply is closer to (difflib's
    character similarity, case aside); "tie" when it is equally close to both."""
    from difflib import SequenceMatcher
    sim = lambda other: SequenceMatcher(None, reply.lower().strip(), other.lower().strip()).ratio()  # noqa: E731
    c, r = sim(chosen), sim(rejected)
    return "chosen" if c > r else "rejected" if r > c else "tie"
