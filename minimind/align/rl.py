"""RL from rewards: PPO (critic + GAE), GRPO (group baseline) and SPO (persistent Beta-tracker baseline).

Each is a `Stage` whose whole update reads in two adjacent methods: `rollout()` samples responses to a batch
of prompts (`prompt_collate`) and fixes, without gradients, their rewards, the reference's log-probs and the
advantages; `loss()` is the policy-gradient loss on one rollout plus a KL term to the frozen reference. They are
two because an optimizer step makes all its rollouts first, with the policy as it stood (`step_batches`), then
runs one loss and backward per rollout. Chapter 11 explains the baselines.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..data.datasets import pad_sequences
from ..model.attention import KVCache
from ..model.transformer import CausalLMOutput
from ..train.stages import Stage, length_buckets, option, register, shared_length
from .dpo import frozen_copy, token_logprobs
from .reward import ScalarHeadModel, load_reward
from .spo_baseline import BetaTracker, SPOBaseline, kl_adaptive_rho, prompt_key, spo_baseline_trace  # noqa: F401


# --------------------------------------------------------------------------------------------------
# The math, as small functions
# --------------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (PPO normalises its advantages so)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def completion_mask(completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1.0 on the response tokens through the first EOS, 0.0 after it (generation pads ended rows with EOS)."""
    is_eos = (completion == eos_id).long()
    after_first_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_first_eos).float()


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE: delta_t = r_t + gamma V_{t+1} - V_t (V = 0 past the last token), A_t = delta_t + gamma lam A_{t+1}.
    rewards, values, mask: (N, R). Returns (advantages, returns = A + V: the critic's target), both (N, R)."""
    advantages = torch.zeros_like(rewards)  # (N, R)
    running = torch.zeros_like(rewards[:, 0])  # (N,) A_{t+1}
    T = rewards.shape[1]
    for t in reversed(range(T)):
        alive_next = mask[:, t + 1] if t + 1 < T else torch.zeros_like(running)  # (N,)
        next_value = values[:, t + 1] * alive_next if t + 1 < T else torch.zeros_like(running)  # (N,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (N,)
        # lam=1: full return - V (unbiased, noisy); lam=0: one-step TD (low variance, biased by the critic)
        running = delta + gamma * lam * alive_next * running
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask  # (N, R) each


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float = 0.2):
    """PPO's clipped surrogate -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), masked mean over (N, R) tokens.
    Returns (loss, fraction of tokens clipped)."""
    ratio = torch.exp(logp - old_logp)  # (N, R) pi / pi_old
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))  # (N, R)
    return masked_mean(loss, mask), masked_mean(((ratio - 1).abs() > clip).float(), mask)


def ppo_value_loss(values, old_values, returns, mask, clip: float = 0.2):
    """0.5 * max((V - R)^2, (V_clipped - R)^2): the critic's step is clipped like the policy's."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)  # (N, R)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4):
    """(r - mean_group) / (std_group + eps) for (N,) rewards laid out group by group; an all-equal group gets 0.
    Returns (advantages (N,), zero_variance (N / group_size,) bool)."""
    if group_size < 2:
        raise ValueError("GRPO needs group_size >= 2: a group of one is its own baseline (use SPO)")
    groups = rewards.float().view(-1, group_size)  # (N / G, G)
    mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)  # (N / G, 1) each
    zero = std < 1e-6  # (N / G, 1)
    advantages = torch.where(zero, torch.zeros_like(groups), (groups - mean) / (std + eps))  # (N / G, G)
    return advantages.reshape(-1), zero.squeeze(1)  # (N,), (N / G,)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(d) - d - 1 with d = log ref - log pi (Schulman's k3):
    unbiased on samples from pi, never negative, 0 exactly when the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


# --------------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------------
def prompt_collate(items: list[dict], pad_id: int = 0) -> dict:
    """Prompts -> a left-padded batch (generation appends on the right, so the prompts must end together):
    input_ids, attention_mask, and the prompt texts and answers as lists."""
    seqs = []
    for it in items:
        ids = torch.as_tensor(it["prompt_ids"], dtype=torch.long)
        real = (ids != pad_id).nonzero()  # drop any padding the dataset added
        seqs.append(ids[int(real[0]):int(real[-1]) + 1] if len(real) else ids[-1:])
    input_ids, mask = pad_sequences(seqs, pad_id, side="left")  # (B, P) each
    return {"input_ids": input_ids, "attention_mask": mask, "prompt": [it.get("prompt") for it in items],
            "answer": [it.get("answer") for it in items]}


def unwrap(model):
    """The model itself, inside DDP (.module) or torch.compile (._orig_mod): it alone has .generate."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


@dataclass
class Rollout:
    """One batch of generated responses: prompt + response ids, masks, rewards, and what each stage
    computes once per rollout (log-probs of the sampling policy and the reference, values, advantages)."""
    sequences: torch.Tensor        # (N, P + R) prompt then response
    attention_mask: torch.Tensor   # (N, P + R) 0 on the prompt's left padding and after the first EOS
    mask: torch.Tensor             # (N, R) 1.0 on response tokens through the first EOS
    rewards: Optional[torch.Tensor]  # (N,), set by the stage's rollout() after sampling
    prompts: list
    responses: list[str]
    answers: list
    gen_tokens_per_s: float
    data: dict = field(default_factory=dict)
    uses: int = 0

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]


def response_logprobs(model, rollout: Rollout, min_shared: int = 32):
    """(log p(each response token) under `model`, (N, R); the model's output, for its MoE aux loss).
    When every prompt opens with the same min_shared tokens or more (a system turn with tools), that prompt
    runs once (`shared_prompt_logprobs`)."""
    n = rollout.response_len
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):  # DDP: one forward per backward
        shared = shared_prompt_logprobs(model, rollout, min_shared)
        if shared is not None:
            return shared
    out = model(rollout.sequences, attention_mask=rollout.attention_mask, logits_to_keep=n + 1)  # (N, R + 1, V)
    # logits at position t predict token t + 1: the last n + 1 positions predict the n response tokens
    return token_logprobs(out.logits[:, :-1], rollout.sequences[:, -n:]), out  # (N, R)


def shared_prompt_logprobs(model, rollout: Rollout, min_shared: int = 32):
    """response_logprobs with the prompt every row opens with run once: its keys and values are expanded to
    the rows, which run only their own tokens (the rest of the prompt, then the response up to its end),
    grouped by length (`length_buckets`). Entries after a response's end are 0. None when the rows share
    fewer than min_shared tokens."""
    seq, attn, n = rollout.sequences, rollout.attention_mask, rollout.response_len
    p_len = seq.shape[1] - n
    starts = (p_len - attn[:, :p_len].sum(1)).tolist()  # where each left-padded prompt begins
    ends = (p_len + attn[:, p_len:].sum(1)).tolist()    # one past each response's last real token
    rows = [seq[i, s:e].tolist() for i, (s, e) in enumerate(zip(starts, ends))]
    shared = shared_length([r[:p_len - s] for r, s in zip(rows, starts)]) if len(rows) > 1 else 0
    if shared < min_shared:
        return None
    cache = KVCache(unwrap(model).config.num_hidden_layers)
    model(seq[:1, starts[0]:starts[0] + shared], past_key_values=cache, use_cache=True, logits_to_keep=1)
    logp = [None] * len(rows)
    outs = []
    for group in length_buckets([len(r) - shared for r in rows]):
        tails = [rows[i][shared:] for i in group]
        ids, _ = pad_sequences(tails, 0)  # (G, L) right-padded: the padding comes after every real token
        out = model(ids.to(seq.device), past_key_values=cache.expand(len(group)))
        outs.append(out)
        lp = token_logprobs(out.logits[:, :-1], ids[:, 1:].to(seq.device))  # (G, L - 1): log p(token t + 1)
        for g, i in enumerate(group):
            first = p_len - starts[i] - shared - 1  # the tail position whose logits predict the first response token
            own = lp[g, first:first + ends[i] - p_len]
            logp[i] = F.pad(own, (0, n - own.shape[0]))  # (R,)
    aux = [o.aux_loss for o in outs if o.aux_loss is not None]
    return torch.stack(logp), CausalLMOutput(aux_loss=sum(aux) / len(aux) if aux else None)  # (N, R)


def _metrics(device, **values) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float32, device=device).detach() for k, v in values.items()}


def clip_option():
    """PPO's and GRPO's ratio clip: one default for both."""
    return option(0.2, "ppo/grpo: ratio clip epsilon")


def beta_option():
    """GRPO's and SPO's KL weight: one default for both."""
    return option(0.02, "grpo/spo: weight of the k3 KL to the reference")


@dataclass
class RolloutStage(Stage):
    """What PPO, GRPO and SPO share: a frozen reference, a reward function, and rollouts as the micro-batches
    (`step_batches`: grad_accum rollouts before any backward, reused updates_per_rollout times)."""
    data = "rl"
    samples_per_prompt = 1
    updates_per_rollout = 1
    reward: Any = option("rule", "rule | rule+format | a reward-model folder (`train reward` output or a local "
                                 "transformers classifier)")
    tokenizer: Any = None  # decodes the responses for the reward
    max_new_tokens: int = option(24, "rollout length in tokens")
    temperature: float = option(1.0, "sampling temperature of the rollouts")
    top_k: int = option(0, "sample from the k likeliest tokens (0: all)")
    top_p: float = option(1.0, "nucleus sampling threshold")
    reference: Any = None  # the frozen reference (default: a copy of the model, made in setup)
    eos_token_id: Optional[int] = None  # default: the tokenizer's

    def __post_init__(self):
        if self.tokenizer is None:
            raise ValueError("an RL stage needs the tokenizer, to decode responses for the reward")
        self.reward_fn = load_reward(self.reward, self.tokenizer)  # `reward` is its spec (or a function)
        self.eos_id = self.eos_token_id if self.eos_token_id is not None else getattr(self.tokenizer,
                                                                                      "eos_token_id", 2)
        self.buffer: list[Rollout] = []
        self.uses = 0
        self.last_rollout: Optional[Rollout] = None

    @classmethod
    def build(cls, inputs, **options):
        return cls(tokenizer=inputs.tokenizer, **options)

    collate_fn = staticmethod(prompt_collate)

    def setup(self, model, device):
        if self.reference is None:
            self.reference = frozen_copy(model)
        self.reference.to(device).eval().requires_grad_(False)
        if hasattr(self.reward_fn, "to"):
            self.reward_fn.to(device)

    def step_batches(self, model, batches, n):
        """The step's n rollouts (one per batch of prompts), all made before any backward, reused
        updates_per_rollout steps."""
        if not self.buffer or self.uses >= self.updates_per_rollout:
            self.buffer = [self.rollout(model, next(batches)) for _ in range(n)]
            self.last_rollout = self.buffer[-1]
            self.uses = 0
        elif len(self.buffer) != n:
            raise ValueError("grad_accum changed while a rollout was being reused")
        self.uses += 1
        return self.buffer

    def batch_tokens(self, rollout) -> int:
        return int(rollout.mask.sum())  # generated tokens: what RL trains on

    def rollout(self, model, batch) -> Rollout:
        """Responses to a batch of prompts, with what every update on them needs: each stage's own."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, model, batch) -> Rollout:
        """samples_per_prompt responses to each prompt, y ~ pi(. | x), decoded for the reward (not yet given)."""
        policy, g = unwrap(model), self.samples_per_prompt
        batch = {k: v.to(policy.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        prompt_ids = batch["input_ids"].repeat_interleave(g, 0)  # (N, P), N = B * g
        prompt_mask = batch["attention_mask"].repeat_interleave(g, 0)  # (N, P)
        prompts = [p for p in batch["prompt"] for _ in range(g)]
        answers = [a for a in batch.get("answer", [None] * len(batch["prompt"])) for _ in range(g)]
        start = time.perf_counter()
        sequences = policy.generate(prompt_ids, max_new_tokens=self.max_new_tokens, do_sample=True,
                                    temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                    eos_token_id=self.eos_id, attention_mask=prompt_mask)  # (N, P + R)
        seconds = time.perf_counter() - start
        completion = sequences[:, prompt_ids.shape[1]:]  # (N, R) response tokens
        if completion.shape[1] == 0:
            raise ValueError(f"prompts of {prompt_ids.shape[1]} tokens leave no room to generate within "
                             f"max_position_embeddings={policy.config.max_position_embeddings}; shorten them")
        mask = completion_mask(completion, self.eos_id)  # (N, R)
        responses = [self.tokenizer.decode(c[m.bool()].tolist(), skip_special_tokens=True)
                     for c, m in zip(completion, mask)]
        return Rollout(sequences=sequences, attention_mask=torch.cat([prompt_mask, mask.long()], 1), mask=mask,
                       rewards=None, prompts=prompts, responses=responses, answers=answers,
                       gen_tokens_per_s=mask.sum().item() / max(seconds, 1e-9))

    def task_rewards(self, rollout: Rollout) -> torch.Tensor:
        """The reward function on each (prompt, response, answer): (N,) on the rollout's device."""
        rewards = self.reward_fn(rollout.prompts, rollout.responses, rollout.answers)
        return torch.as_tensor(rewards, dtype=torch.float32).reshape(-1).to(rollout.sequences.device)

    def common_metrics(self, rollout: Rollout, logp: torch.Tensor) -> dict:
        mask = rollout.mask
        return dict(reward_mean=rollout.rewards.mean(), reward_std=rollout.rewards.std(unbiased=False),
                    kl=masked_mean(k3_kl(logp.detach(), rollout.data["ref_logp"]), mask),
                    response_len=mask.sum(1).mean(), gen_tokens_per_s=rollout.gen_tokens_per_s)


# --------------------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------------------
@register
@dataclass
class PPOStage(RolloutStage):
    """PPO: GAE, clipped policy and value losses, `ppo_epochs` steps per rollout; the critic (a `ScalarHeadModel`,
    its own critic_lr) is saved in OUT/critic. Each token pays kl_coef * (log pi - log ref) in the reward."""
    name, help = "ppo", "PPO: a critic, GAE advantages, clipped policy and value losses"
    defaults = dict(lr=1e-4, batch_size=8, log_every=1)
    ppo_epochs: int = option(2, "ppo: optimizer steps on each rollout")
    clip: float = clip_option()
    value_clip: float = option(0.2, "ppo: value clip")
    vf_coef: float = option(0.5, "ppo: weight of the value loss")
    kl_coef: float = option(0.02, "ppo: per-token KL penalty in the reward")
    gamma: float = option(1.0, "ppo: discount")
    lam: float = option(0.95, "ppo: GAE lambda")
    critic_lr: Optional[float] = option(None, "ppo: the critic's learning rate (default: --lr)", float)
    critic: Optional[ScalarHeadModel] = None  # default: the policy with a zeroed scalar head, made in setup

    @property
    def updates_per_rollout(self) -> int:
        return self.ppo_epochs

    def setup(self, model, device):
        super().setup(model, device)
        if self.critic is None:
            self.critic = ScalarHeadModel.from_causal_lm(unwrap(model))
            # a critic that knows nothing should say so: V = 0 everywhere (then A = the return), not random values
            # of order 1 that would drown the first rollouts' advantages in noise
            torch.nn.init.zeros_(self.critic.score.weight)
        self.critic.to(device).train()

    def param_groups(self, args):
        return [{"params": [p for p in self.critic.parameters() if p.requires_grad],
                 "lr": self.critic_lr if self.critic_lr is not None else args.lr}]

    def values(self, rollout: Rollout) -> torch.Tensor:
        # the value of the state *before* each response token: the hidden state one position earlier
        n = rollout.response_len
        return self.critic(rollout.sequences, rollout.attention_mask)[:, -n - 1:-1]  # (N, P + R) -> (N, R)

    # -- PPO's update: rollout() once per rollout, then loss() on each of its ppo_epochs steps --------------
    @torch.no_grad()
    def rollout(self, model, batch) -> Rollout:
        r = self.sample(model, batch)  # y ~ pi_old(. | x), N = B responses of R tokens
        r.rewards = self.task_rewards(r)  # R(x, y): one number per response, (N,)
        d, mask = r.data, r.mask
        d["ref_logp"] = response_logprobs(self.reference, r)[0]  # log pi_ref(y_t | x, y_<t), (N, R)
        d["old_logp"] = response_logprobs(model, r)[0]  # log pi_old(y_t | x, y_<t): the sampler's, (N, R)
        d["old_values"] = self.values(r) * mask  # V_old(s_t): the critic before token t, (N, R)
        # per token, r_t = -kl_coef (log pi_old - log pi_ref); the last token also gets R(x, y)
        token_rewards = -self.kl_coef * (d["old_logp"] - d["ref_logp"]) * mask  # (N, R)
        last = (mask.sum(1).long() - 1).clamp(min=0)  # (N,) each response's last token
        token_rewards[torch.arange(len(last), device=last.device), last] += r.rewards  # r_T += R(x, y)
        # A_t = sum_l (gamma lam)^l delta_t+l, delta_t = r_t + gamma V_t+1 - V_t; returns = A + V (the critic's target)
        advantages, d["returns"] = gae(token_rewards, d["old_values"], mask, self.gamma, self.lam)
        d["advantages"] = whiten(advantages, mask)  # A <- (A - mean A) / std A over the rollout's tokens
        return r

    def loss(self, model, rollout):
        d, mask = rollout.data, rollout.mask
        logp, out = response_logprobs(model, rollout)  # log pi_theta(y_t | x, y_<t), (N, R)
        values = self.values(rollout)  # V_phi(s_t), (N, R)
        # -min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = pi_theta / pi_old, masked mean over tokens
        policy_loss, clip_frac = ppo_policy_loss(logp, d["old_logp"], d["advantages"], mask, self.clip)
        # 0.5 max((V - ret)^2, (V_old + clip(V - V_old, +-value_clip) - ret)^2)
        value_loss = ppo_value_loss(values, d["old_values"], d["returns"], mask, self.value_clip)
        loss = out.with_aux(policy_loss + self.vf_coef * value_loss)  # + the MoE balancing loss, if any
        return loss, _metrics(loss.device, **self.common_metrics(rollout, logp), policy_loss=policy_loss,
                              value_loss=value_loss, clip_frac=clip_frac,
                              approx_kl=masked_mean(d["old_logp"] - logp.detach(), mask),
                              value_mean=masked_mean(values.detach(), mask))

    def state_tensors(self, model):
        return {**super().state_tensors(model), **{f"critic.{k}": v for k, v in self.critic.state_dict().items()}}

    def load_state_tensors(self, model, tensors):
        self.critic.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("critic.")})
        super().load_state_tensors(model, {k: v for k, v in tensors.items() if not k.startswith("critic.")})

    def save(self, model, out_dir, tokenizer=None):
        super().save(model, out_dir, tokenizer)
        self.critic.save_pretrained(out_dir / "critic")


# --------------------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------------------
@register
@dataclass
class GRPOStage(RolloutStage):
    """GRPO: group_size responses per prompt, group-normalised advantages, clipped ratio, beta * k3 KL in the loss.
    With one update per rollout the ratio is 1 (plain policy gradient) and the clip never bites."""
    name, help = "grpo", "GRPO: group-normalised advantages, no critic"
    defaults = dict(lr=1e-4, batch_size=4, log_every=1)
    group_size: int = option(4, "grpo: responses sampled per prompt")
    beta: float = beta_option()
    clip: float = clip_option()
    updates_per_rollout: int = option(1, "grpo: optimizer steps on each rollout")

    def __post_init__(self):
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError("GRPO needs group_size >= 2: a group of one is its own baseline (use SPO)")
        self.samples_per_prompt = self.group_size

    # -- GRPO's update: rollout() once per rollout, then loss() on each of its updates_per_rollout steps -------
    @torch.no_grad()
    def rollout(self, model, batch) -> Rollout:
        r = self.sample(model, batch)  # G responses y_1..y_G ~ pi_old(. | x) to each prompt: N = B * G
        r.rewards = self.task_rewards(r)  # r_i = R(x, y_i), (N,)
        r.data["ref_logp"] = response_logprobs(self.reference, r)[0]  # log pi_ref(y_i,t | x, y_i,<t), (N, R)
        self.group_advantages(r)  # A_i = (r_i - mean_group r) / (std_group r + eps)
        return r

    def group_advantages(self, r: Rollout) -> None:
        advantages, zero = grpo_advantages(r.rewards, self.samples_per_prompt)  # (N,); all-equal groups: A = 0
        groups = r.rewards.view(-1, self.samples_per_prompt)  # (N / G, G)
        r.data.update(advantages=advantages, zero_variance=zero.float(), group_std=groups.std(1),
                      group_mean=groups.mean(1))

    def loss(self, model, rollout):
        d, mask = rollout.data, rollout.mask
        logp, out = response_logprobs(model, rollout)  # log pi_theta(y_i,t | x, y_i,<t), (N, R)
        old_logp = d.setdefault("old_logp", logp.detach())  # pi_old: the first update's policy is the sampler
        ratio = torch.exp(logp - old_logp)  # rho_i,t = pi_theta / pi_old, (N, R)
        adv = d["advantages"][:, None]  # (N, 1): one advantage for all of a response's tokens
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)  # min(rho A, clip(rho) A)
        per_token = -(surrogate - self.beta * k3_kl(logp, d["ref_logp"]))  # -(surrogate - beta KL_k3(pi || ref))
        # mean over each response's tokens, then over responses: every response weighs the same
        loss = out.with_aux(masked_mean(per_token, mask, dim=1).mean())  # + the MoE balancing loss, if any
        return loss, _metrics(loss.device, **self.common_metrics(rollout, logp), group_reward_std=d["group_std"].mean(),
                              zero_var_frac=d["zero_variance"].mean(),
                              clip_frac=masked_mean(((ratio.detach() - 1).abs() > self.clip).float(), mask))


# --------------------------------------------------------------------------------------------------
# SPO
# --------------------------------------------------------------------------------------------------
@register
@dataclass
class SPOStage(RolloutStage):
    """SPO: one response per prompt, A = reward - `SPOBaseline` (clipped to +-advantage_clip), loss -log pi * A
    + beta * k3 KL. The tracker sees rewards rescaled to [0, 1] by reward_range (default: the reward's own)."""
    name, help = "spo", "SPO: one response per prompt against a persistent Beta-tracker baseline"
    defaults = dict(lr=1e-4, batch_size=8, log_every=1)
    beta: float = beta_option()
    baseline: str = option("global", "spo: global (MiniMind2) or per_prompt (the SPO paper)")
    reward_range: Optional[tuple] = option(None, "spo: LOW HIGH of the rewards (default: the reward's own)", float, 2)
    d_half: float = option(0.06, "spo: KL at which the tracker's evidence halves")
    rho_min: float = option(0.5, "spo: fastest decay of the tracker")
    rho_max: float = option(0.96, "spo: slowest decay of the tracker")
    advantage_clip: float = option(5.0, "spo: advantages clipped to +-this")

    def __post_init__(self):
        super().__post_init__()
        self.low, self.high = self.reward_range or getattr(self.reward_fn, "reward_range", (0.0, 1.0))
        self.tracker = SPOBaseline(self.baseline, self.d_half, self.rho_min, self.rho_max)
        self.last_rho = {"rho": math.nan, "prompt_rho": math.nan}

    def rescale(self, rewards: torch.Tensor) -> torch.Tensor:
        return ((rewards - self.low) / (self.high - self.low)).clamp(0, 1)

    # -- SPO's update: rollout(), then loss(), which folds the rewards into the tracker once used ------------
    @torch.no_grad()
    def rollout(self, model, batch) -> Rollout:
        r = self.sample(model, batch)  # one response y ~ pi_old(. | x) to each prompt, N = B
        r.rewards = self.task_rewards(r)  # r = R(x, y), (N,)
        d = r.data
        d["ref_logp"] = response_logprobs(self.reference, r)[0]  # log pi_ref(y_t | x, y_<t), (N, R)
        d["keys"] = [prompt_key(p) for p in r.prompts]
        base01 = torch.tensor(self.tracker.baselines(d["keys"]), device=r.rewards.device)  # alpha / (alpha + beta)
        d["baseline"] = self.low + base01 * (self.high - self.low)  # b: the tracker's mean in reward units, (N,)
        d["advantages"] = (r.rewards - d["baseline"]).clamp(-self.advantage_clip, self.advantage_clip)  # A = r - b
        d["own_baseline"] = torch.tensor([float(self.tracker.has_own(k)) for k in d["keys"]])
        return r

    def loss(self, model, rollout):
        d, mask = rollout.data, rollout.mask
        logp, out = response_logprobs(model, rollout)  # log pi_theta(y_t | x, y_<t), (N, R)
        per_token = -logp * d["advantages"][:, None] + self.beta * k3_kl(logp, d["ref_logp"])  # -A log pi + beta KL_k3
        loss = out.with_aux(masked_mean(per_token, mask, dim=1).mean())  # mean per response, then over responses
        if torch.is_grad_enabled() and not d.get("tracked"):  # fold the rewards in once, after use
            seq_logp = masked_mean(logp.detach(), mask, dim=1)
            self.last_rho = self.tracker.update(d["keys"], self.rescale(rollout.rewards).tolist(),
                                                seq_logp.tolist(), masked_mean(logp.detach(), mask).item())
            d["tracked"] = True
        return loss, _metrics(loss.device, **self.common_metrics(rollout, logp), baseline=d["baseline"].mean(),
                              advantage_mean=d["advantages"].mean(), rho=self.last_rho["rho"],
                              own_baseline_frac=d["own_baseline"].mean())

    def state_tensors(self, model):
        return {**super().state_tensors(model), **self.tracker.state_tensors()}

    def load_state_tensors(self, model, tensors):
        self.tracker.load_state_tensors({k: v.cpu() for k, v in tensors.items() if k.startswith("spo.")})
        super().load_state_tensors(model, {k: v for k, v in tensors.items() if not k.startswith("spo.")})
