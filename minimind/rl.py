"""Reinforcement learning from rewards: PPO, GRPO and SPO, three answers to one question.

The policy writes a response to a prompt, a reward function scores it, and the policy gradient raises
the log-probability of each response token in proportion to its *advantage*: how much better the response
did than expected. "Expected" is the baseline, and the three methods differ in where it comes from:

- PPO: a learned critic (a second transformer with a value head) predicts, at every token, the return
  still to come; GAE turns the per-token rewards and values into advantages. Four models: actor, critic,
  reference, reward.
- GRPO: no critic. Sample G responses to each prompt and use their own mean (and std) as the baseline:
  A_i = (r_i - mean_group) / std_group. G times the generation, and a group whose G rewards are equal
  (all right or all wrong) has zero advantage and teaches nothing.
- SPO (single-stream policy optimisation): no critic and no group. One response per prompt; the baseline
  is a running estimate of the success rate kept *across steps* by a Beta tracker (alpha, beta), forgotten
  faster when the policy has moved (a KL-adaptive decay). MiniMind2 keeps one global tracker (a running
  average reward); the SPO paper keeps one per prompt (that prompt's own success rate), so a prompt the
  model always solves stops producing gradient, and a hard one is compared with its own history.

Every stage also keeps the policy near a frozen reference copy of the starting model with a KL penalty.
All three are `Stage`s on the one training loop: `loss()` generates its rollouts with the package's own
KV-cached generation, scores them, and returns the loss on them. Batches are prompts (`prompt_collate`).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from .dpo import frozen_copy, token_logprobs
from .reward import ScalarHeadModel, load_reward
from .train import Stage


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
    """Generalised advantage estimation over (batch, T) token rewards and values; returns
    (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last response token is 0: the episode ends);
    A_t = delta_t + gamma * lam * A_{t+1}. lam=1 gives the full return minus V_t (unbiased, noisy),
    lam=0 the one-step estimate (low variance, biased by the critic). returns = A + V: the critic's target.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        alive_next = mask[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        next_value = values[:, t + 1] * alive_next if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * alive_next * running
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float = 0.2):
    """PPO's clipped surrogate: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), masked mean.

    The clip removes the incentive to move a token's probability more than eps away from the policy
    that sampled it, which is what makes several epochs on one batch of rollouts safe.
    Returns (loss, fraction of tokens clipped).
    """
    ratio = torch.exp(logp - old_logp)
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    return masked_mean(loss, mask), masked_mean(((ratio - 1).abs() > clip).float(), mask)


def ppo_value_loss(values, old_values, returns, mask, clip: float = 0.2):
    """0.5 * max((V - R)^2, (V_clipped - R)^2): the critic's step is clipped like the policy's."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4):
    """Group-normalised advantages (r - mean_group) / (std_group + eps) for rewards laid out group by group.

    A group whose rewards are all equal has std 0: its advantages are exactly 0 (no signal, and no
    division by a tiny number). Returns (advantages (N,), zero_variance (N / group_size,) bool).
    """
    if group_size < 2:
        raise ValueError("GRPO needs group_size >= 2: a group of one is its own baseline (use SPO)")
    groups = rewards.float().view(-1, group_size)
    mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)
    zero = std < 1e-6
    advantages = torch.where(zero, torch.zeros_like(groups), (groups - mean) / (std + eps))
    return advantages.reshape(-1), zero.squeeze(1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(d) - d - 1 with d = log ref - log pi (Schulman's k3):
    unbiased on samples from pi, never negative, 0 exactly when the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def kl_adaptive_rho(kl: float, d_half: float = 0.06, rho_min: float = 0.5, rho_max: float = 0.96) -> float:
    """SPO's decay: rho = 2^(-KL / D_half), clipped to [rho_min, rho_max]. The more the policy has changed
    since the tracker last looked, the faster the old evidence is forgotten (it halves every D_half)."""
    return float(min(max(2.0 ** (-kl / d_half), rho_min), rho_max))


@dataclass
class BetaTracker:
    """A success rate as a Beta(alpha, beta) belief: alpha counts success, beta failure (fractional for
    rewards in [0, 1]); the baseline is the mean alpha / (alpha + beta)."""
    alpha: float
    beta: float

    @classmethod
    def prior(cls, mean: float, strength: float) -> "BetaTracker":
        """As if `strength` rewards of value `mean` had been seen."""
        return cls(strength * mean, strength * (1 - mean))

    @property
    def baseline(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def update(self, reward01: float, rho: float) -> None:
        """Decay the old evidence by rho, then add the new reward."""
        self.alpha = rho * self.alpha + reward01
        self.beta = rho * self.beta + (1 - reward01)


def prompt_key(prompt) -> str:
    """A short stable name for a prompt (text or messages): the per-prompt tracker's key."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class SPOBaseline:
    """SPO's persistent baselines in [0, 1].

    mode="global" (MiniMind2): one tracker for every prompt, updated once per batch with the batch's mean
    reward; its decay rho comes from the change in the policy's mean token log-prob since the last batch.
    mode="per_prompt" (the SPO paper): each prompt seen before has its own tracker, with a rho from the
    change in its own responses' mean log-prob since its last visit; a prompt seen for the first time
    gets the global baseline, then a tracker that starts from its first reward. The global tracker is
    always updated (it is the fallback).

    A tracker starts as if N_init = 1 / (1 - rho_min) rewards had been seen (MiniMind's choice): the
    effective count it settles to under the fastest forgetting.
    """

    def __init__(self, mode: str = "global", d_half: float = 0.06, rho_min: float = 0.5, rho_max: float = 0.96):
        if mode not in ("global", "per_prompt"):
            raise ValueError(f"SPO baseline mode {mode!r}: use 'global' (MiniMind2) or 'per_prompt' (the paper)")
        self.mode, self.d_half, self.rho_min, self.rho_max = mode, d_half, rho_min, rho_max
        self.strength = 1.0 / (1.0 - rho_min)
        self.global_tracker = BetaTracker.prior(0.5, self.strength)
        self.global_logp: Optional[float] = None
        self.trackers: dict[str, BetaTracker] = {}
        self.logps: dict[str, float] = {}

    def rho(self, logp: float, previous: Optional[float]) -> float:
        # the change in mean log-prob stands in for KL(new policy || old policy), as in MiniMind2
        return self.rho_max if previous is None else kl_adaptive_rho(abs(logp - previous), self.d_half,
                                                                     self.rho_min, self.rho_max)

    def has_own(self, key: str) -> bool:
        return self.mode == "per_prompt" and key in self.trackers

    def baselines(self, keys: list[str]) -> list[float]:
        return [self.trackers[k].baseline if self.has_own(k) else self.global_tracker.baseline for k in keys]

    def update(self, keys: list[str], rewards01: list[float], logps: list[float],
               batch_logp: Optional[float] = None) -> dict:
        """Fold one batch in: rewards rescaled to [0, 1] and each response's mean token log-prob.
        Returns the decays used: {"rho": global, "prompt_rho": mean over revisited prompts (nan if none)}."""
        batch_logp = sum(logps) / len(logps) if batch_logp is None else batch_logp
        rho = self.rho(batch_logp, self.global_logp)
        self.global_tracker.update(sum(rewards01) / len(rewards01), rho)
        self.global_logp = batch_logp
        prompt_rhos = []
        if self.mode == "per_prompt":
            for key, r, lp in zip(keys, rewards01, logps):
                if key in self.trackers:
                    prompt_rhos.append(self.rho(lp, self.logps[key]))
                    self.trackers[key].update(r, prompt_rhos[-1])
                else:
                    self.trackers[key] = BetaTracker.prior(r, self.strength)
                self.logps[key] = lp
        return {"rho": rho, "prompt_rho": sum(prompt_rhos) / len(prompt_rhos) if prompt_rhos else math.nan}

    # -- resumption: plain tensors, so the training loop's checkpoint holds them ---------------------
    def state_tensors(self, prefix: str = "spo.") -> dict[str, torch.Tensor]:
        def row(t, lp):
            return torch.tensor([t.alpha, t.beta, math.nan if lp is None else lp], dtype=torch.float64)
        state = {f"{prefix}global": row(self.global_tracker, self.global_logp)}
        state.update({f"{prefix}prompt.{k}": row(t, self.logps.get(k)) for k, t in self.trackers.items()})
        return state

    def load_state_tensors(self, tensors: dict, prefix: str = "spo.") -> None:
        for name, t in tensors.items():
            a, b, lp = t.double().tolist()
            lp = None if math.isnan(lp) else lp
            if name == f"{prefix}global":
                self.global_tracker, self.global_logp = BetaTracker(a, b), lp
            elif name.startswith(f"{prefix}prompt."):
                key = name[len(f"{prefix}prompt."):]
                self.trackers[key], self.logps[key] = BetaTracker(a, b), lp


def spo_baseline_trace(stream, mode: str = "global", **kw) -> list[float]:
    """The baseline each (prompt, reward in [0, 1]) of `stream` meets, one at a time, with a steady policy
    (no log-prob change): a quick way to see how the global and per-prompt trackers differ."""
    tracker = SPOBaseline(mode, **kw)
    seen = []
    for prompt, reward in stream:
        key = prompt_key(prompt)
        seen.append(tracker.baselines([key])[0])
        tracker.update([key], [reward], [0.0])
    return seen


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
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        input_ids[row, width - len(s):], mask[row, width - len(s):] = s, 1
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
    rewards: torch.Tensor          # (N,)
    prompts: list
    responses: list[str]
    answers: list
    gen_tokens_per_s: float
    data: dict = field(default_factory=dict)
    uses: int = 0

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]


def response_logprobs(model, rollout: Rollout):
    """log p(each response token) under `model`, (N, R), and the MoE aux loss (None for dense models)."""
    n = rollout.response_len
    out = model(rollout.sequences, attention_mask=rollout.attention_mask, logits_to_keep=n + 1)
    # logits at position t predict token t + 1: the last n + 1 positions predict the n response tokens
    return token_logprobs(out.logits[:, :-1], rollout.sequences[:, -n:]), out.aux_loss


def _metrics(device, **values) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float32, device=device).detach() for k, v in values.items()}


class RolloutStage(Stage):
    """What PPO, GRPO and SPO share: a frozen reference, a reward function, and rollouts generated in
    loss() by the policy's own KV-cached `generate`.

    A rollout is reused for `updates_per_rollout` consecutive loss() calls (PPO's epochs): the batches the
    loop hands over meanwhile are skipped, so one optimizer step is one update on one rollout.
    The last rollout stays in `last_rollout` for a notebook to look at.
    """
    samples_per_prompt = 1

    def __init__(self, reward_fn="rule", tokenizer=None, max_new_tokens: int = 24, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, updates_per_rollout: int = 1, reference=None,
                 eos_token_id: Optional[int] = None):
        if tokenizer is None:
            raise ValueError("an RL stage needs the tokenizer, to decode responses for the reward")
        self.reward_fn = load_reward(reward_fn, tokenizer)
        self.tokenizer = tokenizer
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.updates_per_rollout = updates_per_rollout
        self.reference = reference
        self.eos_id = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", 2)
        self.buffer: Optional[Rollout] = None
        self.last_rollout: Optional[Rollout] = None

    collate_fn = staticmethod(prompt_collate)

    def setup(self, model, device):
        if self.reference is None:
            self.reference = frozen_copy(model)
        self.reference.to(device).eval().requires_grad_(False)
        if hasattr(self.reward_fn, "to"):
            self.reward_fn.to(device)

    def loss(self, model, batch):
        if not torch.is_grad_enabled():  # evaluate(): a fresh rollout, leaving the training buffer alone
            return self.rollout_loss(model, self.make_rollout(model, batch))
        if self.buffer is None or self.buffer.uses >= self.updates_per_rollout:
            self.buffer = self.make_rollout(model, batch)
        self.buffer.uses += 1
        return self.rollout_loss(model, self.buffer)

    @torch.no_grad()
    def generate_rollout(self, model, batch) -> Rollout:
        """Sample samples_per_prompt responses to each prompt and score them."""
        policy, g = unwrap(model), self.samples_per_prompt
        prompt_ids = batch["input_ids"].repeat_interleave(g, 0)
        prompt_mask = batch["attention_mask"].repeat_interleave(g, 0)
        prompts = [p for p in batch["prompt"] for _ in range(g)]
        answers = [a for a in batch.get("answer", [None] * len(batch["prompt"])) for _ in range(g)]
        start = time.perf_counter()
        sequences = policy.generate(prompt_ids, max_new_tokens=self.max_new_tokens, do_sample=True,
                                    temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                    eos_token_id=self.eos_id, attention_mask=prompt_mask)
        seconds = time.perf_counter() - start
        completion = sequences[:, prompt_ids.shape[1]:]
        if completion.shape[1] == 0:
            raise ValueError(f"prompts of {prompt_ids.shape[1]} tokens leave no room to generate within "
                             f"max_position_embeddings={policy.config.max_position_embeddings}; shorten them")
        mask = completion_mask(completion, self.eos_id)
        responses = [self.tokenizer.decode(c[m.bool()].tolist(), skip_special_tokens=True)
                     for c, m in zip(completion, mask)]
        rewards = torch.as_tensor(self.reward_fn(prompts, responses, answers), dtype=torch.float32)
        return Rollout(sequences=sequences, attention_mask=torch.cat([prompt_mask, mask.long()], 1), mask=mask,
                       rewards=rewards.reshape(-1).to(sequences.device), prompts=prompts, responses=responses,
                       answers=answers, gen_tokens_per_s=mask.sum().item() / max(seconds, 1e-9))

    def make_rollout(self, model, batch) -> Rollout:
        rollout = self.generate_rollout(model, batch)
        with torch.no_grad():
            rollout.data["ref_logp"] = response_logprobs(self.reference, rollout)[0]
            self.score_rollout(model, rollout)
        self.last_rollout = rollout
        return rollout

    def score_rollout(self, model, rollout: Rollout) -> None:
        """Stage-specific numbers computed once per rollout, without gradients."""

    def rollout_loss(self, model, rollout: Rollout):
        raise NotImplementedError

    def common_metrics(self, rollout: Rollout, logp: torch.Tensor) -> dict:
        mask = rollout.mask
        return dict(reward_mean=rollout.rewards.mean(), reward_std=rollout.rewards.std(unbiased=False),
                    kl=masked_mean(k3_kl(logp.detach(), rollout.data["ref_logp"]), mask),
                    response_len=mask.sum(1).mean(), gen_tokens_per_s=rollout.gen_tokens_per_s)


def _with_aux(loss, aux, model):
    return loss + aux if aux is not None and model.training else loss


# --------------------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------------------
class PPOStage(RolloutStage):
    """PPO with a critic, a per-token KL penalty to the reference, GAE, and clipped policy and value losses.

    The reward of a response arrives at its last token; every token also pays kl_coef * (log pi - log ref)
    (the KL penalty as part of the reward, as in InstructGPT). Each rollout is trained on for
    `ppo_epochs` consecutive optimizer steps; the clip keeps those steps close to the sampling policy.
    The critic (a `ScalarHeadModel`, by default copied from the policy's transformer) trains with the
    policy through `extra_modules()`, and is saved in OUT/critic.
    """
    name = "ppo"

    def __init__(self, reward_fn="rule", tokenizer=None, critic: Optional[ScalarHeadModel] = None,
                 ppo_epochs: int = 2, clip: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5,
                 kl_coef: float = 0.02, gamma: float = 1.0, lam: float = 0.95, **rollout_kw):
        super().__init__(reward_fn, tokenizer, updates_per_rollout=ppo_epochs, **rollout_kw)
        self.critic, self.clip, self.value_clip, self.vf_coef = critic, clip, value_clip, vf_coef
        self.kl_coef, self.gamma, self.lam = kl_coef, gamma, lam

    def setup(self, model, device):
        super().setup(model, device)
        if self.critic is None:
            self.critic = ScalarHeadModel.from_causal_lm(unwrap(model))
        self.critic.to(device).train()

    def extra_modules(self):
        return [self.critic]

    def values(self, rollout: Rollout) -> torch.Tensor:
        # the value of the state *before* each response token: the hidden state one position earlier
        n = rollout.response_len
        return self.critic(rollout.sequences, rollout.attention_mask)[:, -n - 1:-1]

    def score_rollout(self, model, rollout):
        d, mask = rollout.data, rollout.mask
        d["old_logp"] = response_logprobs(model, rollout)[0]
        d["old_values"] = self.values(rollout) * mask
        token_rewards = -self.kl_coef * (d["old_logp"] - d["ref_logp"]) * mask
        last = (mask.sum(1).long() - 1).clamp(min=0)
        token_rewards[torch.arange(len(last), device=last.device), last] += rollout.rewards
        advantages, d["returns"] = gae(token_rewards, d["old_values"], mask, self.gamma, self.lam)
        d["advantages"] = whiten(advantages, mask)

    def rollout_loss(self, model, rollout):
        d, mask = rollout.data, rollout.mask
        logp, aux = response_logprobs(model, rollout)
        values = self.values(rollout)
        policy_loss, clip_frac = ppo_policy_loss(logp, d["old_logp"], d["advantages"], mask, self.clip)
        value_loss = ppo_value_loss(values, d["old_values"], d["returns"], mask, self.value_clip)
        loss = _with_aux(policy_loss + self.vf_coef * value_loss, aux, model)
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
class GRPOStage(RolloutStage):
    """GRPO: group_size responses per prompt, advantages normalised within each group, the clipped
    ratio, and beta * k3 KL to the reference in the loss (not in the reward).

    With the default one update per rollout the ratio is 1 (its gradient is the policy gradient) and the
    clip never bites; updates_per_rollout > 1 reuses the rollout and the clip matters, as in PPO.
    Metrics: reward mean/std, the mean within-group reward std, and the fraction of groups with zero
    variance (all responses scored alike: no signal).
    """
    name = "grpo"

    def __init__(self, reward_fn="rule", tokenizer=None, group_size: int = 4, beta: float = 0.02,
                 clip: float = 0.2, **rollout_kw):
        super().__init__(reward_fn, tokenizer, **rollout_kw)
        if group_size < 2:
            raise ValueError("GRPO needs group_size >= 2: a group of one is its own baseline (use SPO)")
        self.samples_per_prompt, self.beta, self.clip = group_size, beta, clip

    def score_rollout(self, model, rollout):
        advantages, zero = grpo_advantages(rollout.rewards, self.samples_per_prompt)
        groups = rollout.rewards.view(-1, self.samples_per_prompt)
        rollout.data.update(advantages=advantages, zero_variance=zero.float(), group_std=groups.std(1),
                            group_mean=groups.mean(1))

    def rollout_loss(self, model, rollout):
        d, mask = rollout.data, rollout.mask
        logp, aux = response_logprobs(model, rollout)
        old_logp = d.setdefault("old_logp", logp.detach())  # the first update's policy is the sampler
        ratio = torch.exp(logp - old_logp)
        adv = d["advantages"][:, None]
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
        per_token = -(surrogate - self.beta * k3_kl(logp, d["ref_logp"]))
        # mean over each response's tokens, then over responses: every response weighs the same
        loss = _with_aux(masked_mean(per_token, mask, dim=1).mean(), aux, model)
        return loss, _metrics(loss.device, **self.common_metrics(rollout, logp), group_reward_std=d["group_std"].mean(),
                              zero_var_frac=d["zero_variance"].mean(),
                              clip_frac=masked_mean(((ratio.detach() - 1).abs() > self.clip).float(), mask))


# --------------------------------------------------------------------------------------------------
# SPO
# --------------------------------------------------------------------------------------------------
class SPOStage(RolloutStage):
    """Single-stream policy optimisation: one response per prompt, advantage = reward - a persistent
    baseline from `SPOBaseline`, policy gradient -log pi * A plus beta * k3 KL to the reference.

    Against GRPO: one generation per prompt instead of G, no zero-variance groups (a lone response is
    compared with history, not with siblings), and a baseline that remembers across steps; the price is a
    baseline that lags when the policy moves fast, which the KL-adaptive decay counters.
    baseline="global" is MiniMind2's tracker, "per_prompt" the SPO paper's. Rewards are rescaled to
    [0, 1] with reward_range (default: the reward function's own `reward_range`) for the tracker, and the
    baseline scaled back to compare with the raw reward; advantages are clipped to +-advantage_clip.
    """
    name = "spo"

    def __init__(self, reward_fn="rule", tokenizer=None, beta: float = 0.02, baseline: str = "global",
                 reward_range: Optional[tuple] = None, d_half: float = 0.06, rho_min: float = 0.5,
                 rho_max: float = 0.96, advantage_clip: float = 5.0, **rollout_kw):
        super().__init__(reward_fn, tokenizer, **{**rollout_kw, "updates_per_rollout": 1})
        self.beta, self.advantage_clip = beta, advantage_clip
        self.low, self.high = reward_range or getattr(self.reward_fn, "reward_range", (0.0, 1.0))
        self.tracker = SPOBaseline(baseline, d_half, rho_min, rho_max)
        self.last_rho = {"rho": math.nan, "prompt_rho": math.nan}

    def rescale(self, rewards: torch.Tensor) -> torch.Tensor:
        return ((rewards - self.low) / (self.high - self.low)).clamp(0, 1)

    def score_rollout(self, model, rollout):
        keys = [prompt_key(p) for p in rollout.prompts]
        base01 = torch.tensor(self.tracker.baselines(keys), device=rollout.rewards.device)
        baseline = self.low + base01 * (self.high - self.low)
        rollout.data.update(keys=keys, baseline=baseline,
                            advantages=(rollout.rewards - baseline).clamp(-self.advantage_clip, self.advantage_clip),
                            own_baseline=torch.tensor([float(self.tracker.has_own(k)) for k in keys]))

    def rollout_loss(self, model, rollout):
        d, mask = rollout.data, rollout.mask
        logp, aux = response_logprobs(model, rollout)
        per_token = -logp * d["advantages"][:, None] + self.beta * k3_kl(logp, d["ref_logp"])
        loss = _with_aux(masked_mean(per_token, mask, dim=1).mean(), aux, model)
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


# --------------------------------------------------------------------------------------------------
# For the command line and the notebooks
# --------------------------------------------------------------------------------------------------
RL_STAGES = {"ppo": PPOStage, "grpo": GRPOStage, "spo": SPOStage}


def make_alignment_stage(name: str, tokenizer=None, reward="rule", **kw) -> Stage:
    """The stage for `minimind train NAME`: dpo, reward, ppo, grpo or spo (kw go to its constructor)."""
    from .dpo import DPOStage
    from .reward import RewardStage
    if name == "dpo":
        return DPOStage(**kw)
    if name == "reward":
        return RewardStage()
    if name in RL_STAGES:
        return RL_STAGES[name](load_reward(reward, tokenizer), tokenizer, **kw)
    raise ValueError(f"unknown alignment stage {name!r}; choose dpo, reward, ppo, grpo or spo")
