# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Direct preference optimisation (DPO)
#
# SFT shows the model good answers. Preference data says something SFT cannot: *this* answer is better
# than *that* one. Each record holds a prompt with a **chosen** answer and a **rejected** one; in the course
# corpus the rejected answer is a wrong fact, a wrong sum or a rude brush-off.
#
# DPO (Rafailov et al., 2023) learns from such pairs directly: no reward model, no sampling. It raises the
# log-probability of the chosen answer *relative to a frozen copy of the SFT model* (the **reference**),
# and lowers the rejected one's, with the loss
#
# $$\mathcal{L} = -\log\sigma\Big(\beta\big[(\log\pi(y_w|x) - \log\pi_\text{ref}(y_w|x)) - (\log\pi(y_l|x) - \log\pi_\text{ref}(y_l|x))\big]\Big).$$
#
# $\beta(\log\pi - \log\pi_\text{ref})$ is the **implicit reward** of an answer: how much likelier the policy
# makes it than the reference did. The reference is what keeps the policy from drifting anywhere else:
# moving the probability of text that both answers share changes both terms alike and buys nothing.
# This chapter trains `runs/<preset>/dpo` from chapter 08's SFT model.
#
# Your numbers will differ a little from the ones printed here: every CPU rounds differently, and training
# carries the difference forward, so losses and accuracies move with the machine (and with `seed`). What
# the chapter teaches should not: the robustness page (book/robustness.md) checks each lesson across seeds
# and two sets of CPU kernels, and says where one does not hold.

# %% tags=["parameters"]
preset = "tiny"
data = "course"        # course | minimind (MiniMind's dpo.jsonl)
device = "auto"
dtype = "auto"         # auto: bf16 autocast on a GPU or a CPU with bf16 hardware, else float32
out_dir = None
max_steps = 100        # None: one epoch over the pairs
batch_size = 8         # pairs per step
lr = 5e-5
beta = 0.5
beta_sweep = (0.1, 2.0)    # two short extra runs that show what beta does
sweep_steps = 40
seed = 0               # the training seed (`minimind course --seed`: do the lessons hold for other seeds?)

# %%
import math
import re

import matplotlib.pyplot as plt
import numpy as np
import torch

from minimind import MiniMindForCausalLM
from minimind.align.dpo import dpo_loss, pair_logprobs, preference_accuracy, preference_callback, reply_side
from minimind.course import data_paths, ensure_stage, record, runs_dir
from minimind.data import DPODataset, read_jsonl
from minimind.model.generation import generate_replies
from minimind.train import load_tokenizer, read_metrics, train_stage
from minimind.use.answers import answer_matches, extract_numbers

torch.set_num_threads(1)  # the tiny model's matrices are too small to gain from threads
run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
tokenizer = load_tokenizer(paths["tokenizer"])
sft_dir = ensure_stage("sft", run_dir, paths, preset, device, dtype=dtype, seed=seed)  # chapter 08's model, or built now

# %% [markdown]
# ## Preference pairs
# A pair shares its prompt; only the assistant's answer differs, and only the answer's tokens are scored.
# MiniMind's own `dpo.jsonl` has no held-out split, so with `data="minimind"` the "held-out" numbers below
# are measured on the first training pairs (and say so).

# %%
# NBVAL_CHECK_OUTPUT
val_file = paths.get("dpo_val")
train_pairs = DPODataset(paths["dpo"], tokenizer, max_len=256)
val_pairs = DPODataset(val_file or paths["dpo"], tokenizer, max_len=256)
val_items = [val_pairs[i] for i in range(min(len(val_pairs), 256))]
val_records = read_jsonl(val_file or paths["dpo"], "dpo", limit=len(val_items))
print(f"{len(train_pairs)} training pairs, {len(val_items)} {'held-out' if val_file else 'TRAINING (no val file)'} pairs")
for rec in val_records[:3]:
    print(f"Q: {rec['chosen'][-2]['content']}\n   chosen:   {rec['chosen'][-1]['content']}\n"
          f"   rejected: {rec['rejected'][-1]['content']}")

# %% [markdown]
# ## The loss by hand
# At the start the policy *is* the reference: every implicit reward is 0, the margin is 0 and the loss is
# $-\log\sigma(0) = \log 2$ whatever the pair. Below, a pair where training has raised the chosen answer by
# 2 nats and lowered the rejected one by 1 nat: the margin is $\beta \cdot 3$.

# %%
# NBVAL_CHECK_OUTPUT
ref_c, ref_r = torch.tensor([-5.0]), torch.tensor([-5.0])
loss0, _, _ = dpo_loss(ref_c, ref_r, ref_c, ref_r, beta=0.1)
print(f"at the reference: loss {loss0.item():.4f} = log 2 = {math.log(2):.4f}")
for b in (0.02, 0.1, 0.5):
    loss, rc, rr = dpo_loss(ref_c + 2, ref_r - 1, ref_c, ref_r, beta=b)
    print(f"beta {b:<4}: rewards chosen {rc.item():+.2f}, rejected {rr.item():+.2f}, loss {loss.item():.4f}")

# %% [markdown]
# ## Before: what the SFT model prefers
# Against itself the SFT model has zero margins (a tie on every pair), so the implicit-reward accuracy
# starts at 0 by definition. What we *can* ask is whether the SFT model already finds the chosen answer
# likelier than the rejected one, and which of the two its own greedy reply resembles.

# %%
sft = MiniMindForCausalLM.from_pretrained(sft_dir).eval()
sft_c, sft_r = pair_logprobs(sft, val_items)
prompts = [rec["chosen"][:-1] for rec in val_records]


def sides(model):
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens=40)
    return replies, [reply_side(r, rec["chosen"][-1]["content"], rec["rejected"][-1]["content"])
                     for r, rec in zip(replies, val_records)]


sft_replies, sft_sides = sides(sft)
print(f"SFT: log p(chosen) > log p(rejected) on {(sft_c > sft_r).float().mean():.0%} of the pairs; its greedy "
      f"reply is closer to the chosen answer on {sft_sides.count('chosen') / len(sft_sides):.0%}")

# %% [markdown]
# ## Train
# The stage copies the SFT model into a frozen reference, then runs the usual loop on the DPO loss. A
# callback measures the held-out pairs at every evaluation point: the implicit-reward accuracy (how often
# the chosen answer's reward is the larger) and the mean margin.

# %%
eval_every = max(1, (max_steps or 100) // 6)
summary = train_stage("dpo", run_dir / "dpo", data=paths["dpo"], val_data=val_file, tokenizer=tokenizer, init=sft_dir,
                      stage_kwargs={"beta": beta}, max_steps=max_steps, batch_size=batch_size, lr=lr, device=device, dtype=dtype,
                      eval_every=eval_every, log_every=2, callbacks=[preference_callback(sft, val_items, beta)], seed=seed)
dpo = summary["model"].eval()
metrics = read_metrics(run_dir / "dpo")
print(f"{summary['steps']} steps in {summary['wall_time']:.0f} s; last held-out accuracy "
      f"{metrics[-1]['val_reward_accuracy']:.0%}, margin {metrics[-1]['val_reward_margin']:.2f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
curve = lambda key: zip(*[(m["step"], m[key]) for m in metrics if key in m])  # noqa: E731
for ax, (train_key, val_key, title) in zip(axes, [("reward_accuracy", "val_reward_accuracy", "preference accuracy"),
                                                  ("reward_margin", "val_reward_margin", "reward margin"),
                                                  ("reward_chosen", "reward_rejected", "implicit rewards (train)")]):
    ax.plot(*curve(train_key), label=train_key)
    ax.plot(*curve(val_key), "o-" if val_key.startswith("val") else "-", ms=4, label=val_key)
    ax.set(title=title, xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The margin grows almost entirely on one side: the rejected answers' implicit reward falls, while the
# chosen answers' stays near 0. It is far easier to make a rude or wrong answer unlikely than to make an
# answer the SFT model already likes likelier still.
#
# ## After: held-out pairs and answers
# The SFT model was already polite (it never saw a rude answer), so its greedy replies were mostly on
# the chosen side before DPO. What DPO changes is the *probability* of the rejected answers, shown in
# nats below: a fall of 10 nats makes an answer $e^{10} \approx 22{,}000$ times less likely. Then the
# greedy replies: how many change, and, for the sums among them (the few pairs that set a right sum against
# a wrong one), whether they were right before and after.

# %%
heldout = preference_accuracy(dpo, sft, val_items, beta=beta)
dpo_c, dpo_r = pair_logprobs(dpo, val_items)
dpo_replies, dpo_sides = sides(dpo)
print(f"held-out pairs: implicit-reward accuracy {heldout['accuracy']:.1%}, mean margin {heldout['margin']:.3f}")
print(f"log p(chosen) > log p(rejected): SFT {(sft_c > sft_r).float().mean():.0%} -> DPO {(dpo_c > dpo_r).float().mean():.0%}")
print(f"change in log p: chosen {(dpo_c - sft_c).mean():+.2f} nats, rejected {(dpo_r - sft_r).mean():+.2f} nats")
for name, s in (("SFT", sft_sides), ("DPO", dpo_sides)):
    print(f"{name} greedy replies closer to: " + ", ".join(f"{k} {s.count(k)}" for k in ("chosen", "rejected", "tie")))

# %%
changed = [i for i, (a, b) in enumerate(zip(sft_replies, dpo_replies)) if a != b]
print(f"{len(changed)} of {len(prompts)} greedy replies changed", end="")
sums = [i for i in changed if re.search(r"\d+ (plus|minus) \d+ is \d+", val_records[i]["chosen"][-1]["content"])]
right = {name: sum(answer_matches(replies[i], extract_numbers(val_records[i]["chosen"][-1]["content"])[-1])
                   for i in sums) for name, replies in (("SFT", sft_replies), ("DPO", dpo_replies))}
moved = sum(sft_sides[i] != dpo_sides[i] for i in changed)
print(f"; {moved} of them moved to another side (chosen, rejected, tie); {len(sums)} are sums, "
      f"right before DPO: {right['SFT']}, after: {right['DPO']}. The first few:")
for i in changed[:6]:
    rec = val_records[i]
    print(f"Q: {rec['chosen'][-2]['content']}   (chosen: {rec['chosen'][-1]['content'][:60]!r})\n"
          f"   SFT: {sft_replies[i][:80]!r} [{sft_sides[i]}]\n   DPO: {dpo_replies[i][:80]!r} [{dpo_sides[i]}]")

# %% [markdown]
# The replies that change are mostly sums, and a wrong sum mostly becomes another wrong sum (the counts
# above). What DPO did here is make the rude answers unlikely, which is what most of its pairs set against
# the polite ones; the few pairs that set a right sum against a wrong one cannot teach arithmetic to a model
# that has not learned to add. Preference pairs move a model between answers it can already give.

# %%
gain = (dpo_c - sft_c) - (dpo_r - sft_r)
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.hist(beta * gain.numpy(), bins=30, color="C0")
ax.axvline(0, color="grey", ls="--")
ax.set(xlabel="implicit reward margin on a held-out pair", ylabel="pairs",
       title=f"after DPO: {heldout['accuracy']:.0%} of held-out pairs have a positive margin")
plt.show()

# %% [markdown]
# ## What beta does
# The loss only sees $\beta \times$ (log-ratio margin). A large $\beta$ reaches a given margin with a small
# change in log-probabilities: the policy stays close to the reference. A small $\beta$ needs a large
# change for the same loss, so the policy drifts further from the SFT model (DPO's optimum is
# $\pi \propto \pi_\text{ref}\, e^{r/\beta}$: $\beta$ is the weight of the KL leash). Left: the loss against the
# log-ratio margin for three betas. Right: two short extra runs, measuring how far the log-probabilities
# of the held-out answers moved. (This chapter's main run uses a large $\beta$ for the same reason: with
# $\beta = 0.1$ and a higher learning rate the tiny model soon drifts into writing the long chosen
# stories in reply to everything, the classic way DPO over-optimises.)

# %%
sweep = {}
for b in beta_sweep:
    m = train_stage("dpo", run_dir / f"dpo_beta_{b}", data=paths["dpo"], tokenizer=tokenizer, init=sft_dir,
                    stage_kwargs={"beta": b}, max_steps=sweep_steps, batch_size=batch_size, lr=lr, device=device, dtype=dtype,
                    progress=False, seed=seed)["model"].eval()
    c, r = pair_logprobs(m, val_items)
    sweep[b] = {"accuracy": preference_accuracy(m, sft, val_items, beta=b)["accuracy"],
                "chosen": (c - sft_c).mean().item(), "rejected": (r - sft_r).mean().item()}
    print(f"beta {b}: {sweep_steps} steps, held-out accuracy {sweep[b]['accuracy']:.0%}, log p moved: "
          f"chosen {sweep[b]['chosen']:+.2f}, rejected {sweep[b]['rejected']:+.2f} nats")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
x = np.linspace(-10, 20, 200)
for b in sorted({*beta_sweep, beta}):
    ax1.plot(x, np.log1p(np.exp(-b * x)), label=f"beta {b}")
ax1.axhline(math.log(2), color="grey", ls=":", lw=1)
ax1.set(xlabel="log-ratio margin (nats)", ylabel="DPO loss", title="the loss sees beta x margin")
ax1.legend(fontsize=8)
names = [f"beta {b}" for b in beta_sweep]
ax2.bar(np.arange(len(names)) - 0.2, [sweep[b]["chosen"] for b in beta_sweep], 0.4, label="chosen")
ax2.bar(np.arange(len(names)) + 0.2, [sweep[b]["rejected"] for b in beta_sweep], 0.4, label="rejected")
ax2.set(xticks=range(len(names)), xticklabels=names, ylabel="change in log p (nats)",
        title=f"drift from the reference after {sweep_steps} steps")
ax2.axhline(0, color="grey", lw=1)
ax2.legend(fontsize=8, loc="lower center")
plt.tight_layout()
plt.show()

# %%
record(run_dir, "10_dpo", heldout_pref_accuracy=round(heldout["accuracy"], 4), heldout_margin=round(heldout["margin"], 4),
       heldout_pairs=heldout["pairs"], sft_logp_pref=round((sft_c > sft_r).float().mean().item(), 4),
       dpo_logp_pref=round((dpo_c > dpo_r).float().mean().item(), 4),
       replies_chosen_side_sft=sft_sides.count("chosen"), replies_chosen_side_dpo=dpo_sides.count("chosen"),
       beta=beta, steps=summary["steps"], train_seconds=round(summary["wall_time"], 1),
       **{f"beta_{b}_logp_drift_rejected": round(v["rejected"], 3) for b, v in sweep.items()})

# %% [markdown]
# ## Where we differ from MiniMind
# MiniMind's `trainer/train_dpo.py` has the same loss, with a frozen copy of the SFT model as the reference.
# Its minimind-3 version (commit d65ef2c) sums each answer's token log-probabilities, as we do by default;
# MiniMind2's averaged them over the answer's tokens (`average_logprobs=True` here does that), which keeps a
# long answer's implicit reward on the scale of a short one's. It uses beta 0.15 (MiniMind2: 0.1) and a
# learning rate of 4e-8, which on its real data leaves the SFT model's answers nearly as they were. This
# chapter's `beta` and `lr` are the tiny model's; the sweep above shows what beta changes here.

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. The loss (implement).** Write `dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
# beta)` from the four sequence log-probabilities of each pair (shape (B,) each): the mean loss.

# %%
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    ...  # your code: a scalar tensor


check("10.dpo_loss", dpo_loss)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    margin = beta * (policy_chosen - ref_chosen) - beta * (policy_rejected - ref_rejected)  # (B,)
    return -torch.nn.functional.logsigmoid(margin).mean()


assert check("10.dpo_loss", dpo_loss)

# %% [markdown]
# **2. Where it starts (predict).** At the first step the policy is a copy of the reference. What is the DPO
# loss then, whatever the pairs? (Compare with the first point of the loss curve above.)

# %%
first_loss = None  # your answer
check("10.loss_at_start", first_loss)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: both implicit rewards are 0, and -log sigmoid(0) = log 2
first_loss = math.log(2)
assert check("10.loss_at_start", first_loss)
