# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Reinforcement learning: PPO, GRPO and SPO
#
# DPO learned from fixed pairs. Reinforcement learning lets the model **write its own answers** (rollouts),
# scores each with a **reward**, and makes well-scored answers likelier. Here the reward is *verifiable*:
# the course's RL prompts carry a checkable answer ("What is 4 plus 3?" expects 7), and a rule checks it.
#
# The policy gradient raises the log-probability of each response token in proportion to its
# **advantage**: how much better the response did than expected. The three algorithms differ in where
# "expected" (the baseline) comes from:
#
# | | baseline | responses per prompt | extra model |
# | --- | --- | --- | --- |
# | **PPO** | a learned critic predicts the return at every token (GAE) | 1 | a critic as large as the policy |
# | **GRPO** | the mean of a group of responses to the same prompt | G | none |
# | **SPO** | a running success rate that persists across steps | 1 | none |
#
# All three also keep the policy close to a frozen copy of the SFT model (the reference) with a KL term,
# and all three are one `Stage` on the same training loop. This chapter trains them side by side on the
# same prompts, with the same reward and the same number of generated responses per step.

# %% tags=["parameters"]
preset = "tiny"
data = "course"          # course | minimind (rlaif-mini: open prompts, no checkable answers)
device = "auto"
out_dir = None
algorithms = ("ppo", "grpo", "spo")
max_steps = 80           # optimizer steps per algorithm
responses = 16           # generated responses per step, for every algorithm
group_size = 4           # GRPO: responses // group_size prompts per step
lr = 5e-5
max_new_tokens = 16
temperature = 1.0
kl_beta = 0.02           # GRPO and SPO: weight of the KL term; PPO: KL penalty in the reward
spo_baseline = "global"  # global (MiniMind2) | per_prompt (the SPO paper)
reward = "rule"          # rule | a folder with a reward model (e.g. InternLM2-1.8B-Reward, for data="minimind")

# %%
import re

import matplotlib.pyplot as plt
import numpy as np
import torch

from minimind import MiniMindForCausalLM
from minimind.align.reward import RuleReward
from minimind.align.rl import grpo_advantages, spo_baseline_trace
from minimind.course import data_paths, ensure_stage, record, runs_dir
from minimind.course.plots import plot_runs_side_by_side
from minimind.data import RLPromptDataset, read_jsonl
from minimind.train import load_tokenizer, read_metrics, train_stage
from minimind.use.eval import rl_accuracy

torch.set_num_threads(1)  # the tiny model's matrices are too small to gain from threads; rollouts are many tiny steps
run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
tokenizer = load_tokenizer(paths["tokenizer"])
sft_dir = ensure_stage("sft", run_dir, paths, preset, device)  # chapter 08's model, or built now

# %% [markdown]
# ## Prompts and the reward
# Each RL record is a conversation plus a short `answer`. The rule reward (`minimind.align.reward.RuleReward`)
# gives 1 when the reply's final answer is right and 0 otherwise: for a number, the *last* number in the
# reply must equal it (so "4 plus 3 is 5." earns nothing for 7, although it contains a 3); a word must
# appear as a whole word. A reward anyone can check cannot be fooled the way a learned reward model can.

# %%
# NBVAL_CHECK_OUTPUT
train_prompts = RLPromptDataset(paths["rl"], tokenizer)
val_records = read_jsonl(paths["rl_val"], "rl") if paths.get("rl_val") else []
print(f"{len(train_prompts)} training prompts, {len(val_records)} held-out prompts")
print(repr(train_prompts[0]["prompt"]), "-> answer", repr(train_prompts[0]["answer"]))
rule = RuleReward()
for reply, answer in [("4 plus 3 is 7.", "7"), ("4 plus 3 is 5.", "7"), ("3 plus 4 makes 7, not 8.", "7"),
                      ("Mira is a baker.", "baker"), ("Mira bakes bread.", "baker")]:
    print(f"  {reply!r:30} answer {answer!r:8} -> reward {rule.score(reply, answer)}")

# %% [markdown]
# ## Before: the SFT model on held-out prompts
# Greedy replies to the held-out prompts (`rl_val.jsonl`), graded by `minimind.use.eval.answer_matches`.
# The prompts are of two kinds, facts about the course world and small sums, and we count them apart.

# %%
is_sum = lambda question: bool(re.search(r"plus|minus|add|take|make", question, re.I))  # noqa: E731


def heldout_accuracy(model):
    result = rl_accuracy(model, tokenizer, paths["rl_val"], max_new_tokens=max_new_tokens) if val_records else {"rows": []}
    rows = result["rows"]
    part = lambda keep: float(np.mean([r["correct"] for r in rows if keep(r)])) if rows else float("nan")  # noqa: E731
    return {"all": part(lambda r: True), "facts": part(lambda r: not is_sum(r["question"])),
            "sums": part(lambda r: is_sum(r["question"])), "rows": rows}


sft = MiniMindForCausalLM.from_pretrained(sft_dir).eval()
before = heldout_accuracy(sft)
print(f"SFT model: {before['all']:.0%} of {len(before['rows'])} held-out prompts; facts {before['facts']:.0%}, "
      f"sums {before['sums']:.0%}")
for r in [r for r in before["rows"] if is_sum(r["question"])][:4]:
    print(f"  {r['question']!r} -> {r['output']!r} (answer {r['answer']})")

# %% [markdown]
# ## Advantages by hand
# **GRPO** samples a group of G responses to one prompt and normalises their rewards within the group:
# $A_i = (r_i - \text{mean}) / \text{std}$. Two right and two wrong answers give $\pm 0.87$; a group that is
# all right (or all wrong) has nothing to compare and teaches nothing: its advantages are exactly 0.
#
# **SPO** generates one response per prompt and compares its reward with a baseline $b$ kept *across steps*
# by a Beta tracker $(\alpha, \beta)$, $b = \alpha / (\alpha + \beta)$: each new reward decays the old
# evidence by $\rho$ and is added in ($\alpha \leftarrow \rho\alpha + r$, $\beta \leftarrow \rho\beta + 1 - r$).
# $\rho = 2^{-\text{KL}/D_{1/2}}$ is clipped to $[0.5, 0.96]$: the more the policy has changed since the tracker
# last looked, the faster old evidence is forgotten. That is SPO's answer to its one weakness against GRPO:
# a baseline built from history lags behind a policy that moves fast.

# %%
# NBVAL_CHECK_OUTPUT
rewards = torch.tensor([1.0, 0.0, 1.0, 0.0,   1.0, 1.0, 1.0, 1.0,   0.0, 0.0, 0.0, 1.0])
adv, zero = grpo_advantages(rewards, group_size=4)
for g in range(3):
    print(f"group {g}: rewards {rewards[4 * g:4 * g + 4].tolist()} -> advantages "
          f"{[round(a, 3) for a in adv[4 * g:4 * g + 4].tolist()]}{'  (no signal)' if zero[g] else ''}")

# %% [markdown]
# ### One tracker or one per prompt
# MiniMind2's SPO keeps **one global tracker**: every prompt's response is compared with the running
# average reward over all prompts. The SPO paper keeps **one tracker per prompt**: a prompt is compared
# with its own history. Feed both an easy prompt (always solved) and a hard one (never solved), in turn:

# %%
# NBVAL_CHECK_OUTPUT
stream = [("easy", 1.0), ("hard", 0.0)] * 12
traces = {mode: spo_baseline_trace(stream, mode) for mode in ("global", "per_prompt")}
print("visit  prompt  reward   global b  A=r-b   per-prompt b  A=r-b")
for i in (0, 1, 2, 3, 22, 23):
    (p, r), g, q = stream[i], traces["global"][i], traces["per_prompt"][i]
    print(f"{i:5}  {p:6}  {r:6.1f}   {g:8.3f}  {r - g:+.3f}   {q:12.3f}  {r - q:+.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3))
for mode, style in (("global", "-"), ("per_prompt", "--")):
    for name, color in (("easy", "C2"), ("hard", "C3")):
        idx = [i for i, (p, _) in enumerate(stream) if p == name]
        ax.plot(range(len(idx)), [traces[mode][i] for i in idx], style, color=color, marker=".",
                label=f"{mode}: baseline met by the {name} prompt")
ax.set(xlabel="visit", ylabel="baseline b", ylim=(-0.05, 1.05), title="SPO baselines: one global tracker vs one per prompt")
ax.legend(fontsize=7, loc="center right")
plt.show()

# %% [markdown]
# With one global tracker both prompts meet a baseline near 0.5 for ever: the solved prompt keeps being
# pushed up (advantage +0.5) and the hopeless one down (-0.5), steps spent on prompts with nothing left
# to learn. Per-prompt trackers learn each prompt's own success rate, so the advantage of a solved or a
# hopeless prompt fades to 0 and the gradient goes to prompts the model *sometimes* gets right, the same
# effect as GRPO's group, but without generating G responses per prompt, and without a
# zero-variance group ever being thrown away. The price: a prompt needs a few visits before its tracker
# means anything (until then it meets the global baseline), which a short run over many prompts rarely
# gives.

# %% [markdown]
# ## Train the three side by side
# Same SFT start, same prompts in the same order, same rule reward, same learning rate and the same
# number of generated responses per step (`responses`): PPO and SPO answer that many prompts once each,
# GRPO answers `responses // group_size` prompts `group_size` times each. PPO reuses each rollout for two
# optimizer steps and trains a critic beside the policy. Reuse is safe because of the clip: once a token's
# probability has moved more than $\epsilon$ (0.2) away from the policy that sampled it, the clipped
# ratio stops rewarding further moves in that direction, so a second pass over old samples cannot run
# away with them. The rollouts are a visible step of the loop: each optimizer step first asks the stage
# for its batches (`step_batches`), and an RL stage generates them there, before any backward pass.

# %%
has_answers = bool(val_records) and any(r.get("answer") for r in val_records)
reward_fn = reward if has_answers or reward != "rule" else RuleReward(answer=0.0, length=1.0, repetition=1.0)
if reward_fn is not reward:
    print("no checkable answers in these prompts: the rule reward is only the length and repetition penalties")
options = {"ppo": dict(kl_coef=kl_beta), "grpo": dict(group_size=group_size, beta=kl_beta),
           "spo": dict(beta=kl_beta, baseline=spo_baseline)}
runs, wall = {}, {}
for name in algorithms:
    kw = {**options[name], "reward": reward_fn, "max_new_tokens": max_new_tokens, "temperature": temperature}
    s = train_stage(name, run_dir / name, data=paths["rl"], tokenizer=tokenizer, init=sft_dir, stage_kwargs=kw,
                    max_steps=max_steps, batch_size=responses // group_size if name == "grpo" else responses,
                    lr=lr, device=device, progress=False)
    runs[name], wall[name] = s["model"].eval(), s["wall_time"]
    print(f"{name}: {s['steps']} steps in {s['wall_time']:.0f} s")

# %%
metrics = {name: read_metrics(run_dir / name) for name in algorithms}
fig = plot_runs_side_by_side(metrics, panels=(("reward_mean", "reward per rollout"), ("kl", "KL to the reference"),
                                              ("gen_tokens_per_s", "tokens generated per second")), smooth=10)
plt.show()
tail = lambda name, key: float(np.mean([m[key] for m in metrics[name][-10:]]))  # noqa: E731
for name in algorithms:
    print(f"{name}: reward {np.mean([m['reward_mean'] for m in metrics[name][:10]]):.2f} (first 10 steps) -> "
          f"{tail(name, 'reward_mean'):.2f} (last 10); KL {tail(name, 'kl'):.3f}; "
          f"{np.median([m['gen_tokens_per_s'] for m in metrics[name]]):,.0f} generated tokens/s")

# %% [markdown]
# The per-step reward jumps about mostly because each rollout draws a different mix of prompts (a batch
# heavy in fact questions, which the SFT model already answers, scores high; one heavy in sums scores
# low), so the curves are smoothed. KL is the k3 estimate over each rollout's tokens: how far the policy
# has moved from the SFT model where it actually writes.
#
# ## After: held-out accuracy

# %%
after = {name: heldout_accuracy(model) for name, model in runs.items()}
print(f"{'':6} {'all':>6} {'facts':>6} {'sums':>6}")
for name, acc in [("SFT", before), *after.items()]:
    print(f"{name:6} {acc['all']:6.1%} {acc['facts']:6.1%} {acc['sums']:6.1%}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
kinds, labels = ("all", "facts", "sums"), ["SFT", *algorithms]
for i, (name, acc) in enumerate([("SFT", before), *after.items()]):
    bars = ax.bar(np.arange(3) + (i - 1.5) * 0.2, [acc[k] for k in kinds], 0.2, label=name,
                  color="grey" if name == "SFT" else f"C{i - 1}")
    ax.bar_label(bars, fmt="%.2f", fontsize=6)
ax.set(xticks=range(3), xticklabels=[f"{k} held-out prompts" for k in kinds], ylim=(0, 1.3), ylabel="greedy accuracy")
ax.legend(fontsize=8, ncol=4, loc="upper right")
plt.show()

# %%
for name in algorithms:
    flips = [(b, a) for b, a in zip(before["rows"], after[name]["rows"]) if b["correct"] != a["correct"]]
    print(f"{name}: {sum(a['correct'] for _, a in flips)} held-out answers fixed, "
          f"{sum(b['correct'] for b, _ in flips)} broken")
    for b, a in flips[:3]:
        print(f"   {b['question']!r}: {b['output']!r} -> {a['output']!r} (answer {a['answer']})")

# %% [markdown]
# ### Why the held-out accuracy moves so little here
# A short run on the CPU changes only a handful of held-out answers, in both directions (the counts
# above), so a difference of one to three prompts out of 55 between the algorithms is within what any
# small change of the weights does; none of them reliably raises the accuracy here. Look at where the room is. The fact questions are already answered; only the sums can improve. For a
# sum, a rollout is rewarded only when the sampled answer is right, and the SFT model's samples rarely
# are (measured below at the rollout temperature). Each training prompt is also met about once per run,
# so raising the held-out accuracy means learning *arithmetic*, from a few hundred one-bit rewards. That
# takes far more rollouts than a CPU chapter can afford (on a GPU, raise `max_steps`); what a short run
# does show is the machinery and the differences between the three estimators. A reward that the model
# already earns *sometimes* on *each* prompt is where RL pays off quickly: it sharpens what the model
# can already do, rather than teaching it something new.
#
# The KL values (printed with the rewards above) tell the algorithms apart at the same learning rate.
# GRPO's advantages are zero-mean within each group, and a group that is all right or all wrong
# contributes nothing, so it moves least from the reference. PPO whitens its per-token advantages and
# takes two optimizer steps per rollout; SPO gives every response a non-zero advantage against the
# global baseline, including the solved fact questions (pushed up, although there is nothing left to
# gain) and the sums it gets wrong (pushed down, towards anything else). Both drift further, and a drift
# that buys no reward breaks answers that were right. Per-prompt trackers (`spo_baseline="per_prompt"`)
# would quiet SPO's pushes once each prompt has been seen a few times.

# %%
sums = [r for r in val_records if is_sum(r["conversations"][-1]["content"])]
if sums:
    from minimind.model.generation import generate_replies
    from minimind.align.reward import answer_reward
    torch.manual_seed(0)
    k = 8
    samples = generate_replies(sft, tokenizer, [r["conversations"] for r in sums for _ in range(k)],
                               max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
    sampled = np.mean([answer_reward(s, r["answer"]) for s, r in zip(samples, [r for r in sums for _ in range(k)])])
    print(f"SFT model, sampled at temperature {temperature}: {sampled:.0%} of its answers to held-out sums are right")
print(f"each run generates {max_steps * responses} responses for {len(train_prompts)} training prompts")

# %%
result = {"steps": max_steps, "responses_per_step": responses, "lr": lr, "sft_heldout_accuracy": round(before["all"], 4),
          "sft_heldout_sums": round(before["sums"], 4)}
for name in algorithms:
    result.update({f"{name}_heldout_accuracy": round(after[name]["all"], 4), f"{name}_heldout_sums": round(after[name]["sums"], 4),
                   f"{name}_kl": round(tail(name, "kl"), 4), f"{name}_reward_last10": round(tail(name, "reward_mean"), 4),
                   f"{name}_gen_tokens_per_s": round(float(np.median([m["gen_tokens_per_s"] for m in metrics[name]]))),
                   f"{name}_train_seconds": round(wall[name], 1)})
record(run_dir, "11_rl", **result)
