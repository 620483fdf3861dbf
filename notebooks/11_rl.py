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
# # 11 · Reinforcement learning: PPO, GRPO and SPO
#
# DPO learned from fixed pairs. Reinforcement learning lets the model **write its own answers** (rollouts),
# scores each with a **reward**, and makes well-scored answers likelier. Here the reward is *verifiable*:
# every RL prompt carries its answer, and a rule checks the reply against it.
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
# same prompts, with the same reward and the same number of generated responses per step, three times
# each (three seeds), and measures what they learned on prompts they never trained on.
#
# Your numbers will differ a little from the ones printed here: every CPU rounds differently, and training
# carries the difference forward, so losses and accuracies move with the machine (and with `seed`). What
# the chapter teaches should not: the robustness page (book/robustness.md) checks each lesson across seeds
# and two sets of CPU kernels, and says where one does not hold.

# %% tags=["parameters"]
preset = "tiny"
data = "course"          # course | minimind (rlaif-mini: open prompts, no checkable answers)
device = "auto"
dtype = "auto"         # auto: bf16 autocast on a GPU or a CPU with bf16 hardware, else float32
out_dir = None
algorithms = ("ppo", "grpo", "spo")
reward = "rule"          # rule | a folder with a reward model (e.g. InternLM2-1.8B-Reward, for data="minimind")
spo_baseline = "global"  # global (MiniMind2) | per_prompt (the SPO paper)
tune = False             # True: first rerun the learning-rate and KL-weight sweep that chose the tiny recipe
# None below means the preset's recipe (RECIPES in the next cell): for tiny, settings measured on 2 CPU cores;
# for the GPU presets (minimind2-small, ...), MiniMind's own train_ppo.py / train_grpo.py / train_spo.py:
# rlaif-mini's prompts cut to 66 tokens, replies of up to 1536 tokens, GRPO's group of 8 and 2 prompts a step
# (so 16 responses a step, for every algorithm here), lr 8e-8 (SPO 1e-7, the critic 8e-8), KL weight 0.02,
# sampling temperature 0.8, no warm-up, one epoch, one seed.
seed = 0                 # the course run's seed (`minimind course --seed`): the SFT model's, and the first RL seed
seeds = None             # one run per algorithm and seed: the spread tells learning from luck
max_steps = None         # optimizer steps per run (None in the GPU recipe: one epoch over the prompts)
responses = None         # generated responses per step, for every algorithm
group_size = None        # GRPO: responses // group_size prompts per step, each answered group_size times
lr = None                # {algorithm: learning rate}, or one number for all
critic_lr = None         # PPO's critic
kl_beta = None           # GRPO and SPO: weight of the KL term; PPO: KL penalty in the reward
warmup_steps = None      # steps of linear learning-rate warm-up
max_new_tokens = None
max_prompt_tokens = None  # None: the loader's default
temperature = None

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from minimind import MiniMindForCausalLM
from minimind.align.reward import RuleReward
from minimind.align.rl import grpo_advantages, spo_baseline_trace
from minimind.course import data_paths, ensure_stage, record, runs_dir
from minimind.course.recipe import fill_in
from minimind.course.wordings import wording  # the rl_ask template a question was written from
from minimind.data import RLPromptDataset, read_jsonl
from minimind.data.corpus import LEXICONS, load_world
from minimind.model.generation import generate_replies
from minimind.train import load_tokenizer, read_metrics, train_stage
from minimind.train.parallel import side_by_side_workers, train_side_by_side
from minimind.use.eval import answer_matches, rl_accuracy

RECIPES = {
    "tiny": dict(seeds=3, max_steps=60, responses=32, group_size=8,
                 lr={"ppo": 1e-4, "grpo": 1e-4, "spo": 2e-4}, critic_lr=1e-3, kl_beta=0.1, warmup_steps=5,
                 max_new_tokens=16, max_prompt_tokens=None, temperature=1.0),
    "minimind": dict(seeds=1, max_steps=None, responses=16, group_size=8,
                     lr={"ppo": 8e-8, "grpo": 8e-8, "spo": 1e-7}, critic_lr=8e-8, kl_beta=0.02, warmup_steps=0,
                     max_new_tokens=1536, max_prompt_tokens=66, temperature=0.8),
}
recipe = RECIPES["tiny" if preset == "tiny" else "minimind"]
(seeds, max_steps, responses, group_size, lr, critic_lr, kl_beta, warmup_steps, max_new_tokens, max_prompt_tokens,
 temperature) = fill_in(recipe, seeds=seeds, max_steps=max_steps, responses=responses, group_size=group_size, lr=lr,
                        critic_lr=critic_lr, kl_beta=kl_beta, warmup_steps=warmup_steps,
                        max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, temperature=temperature)
lrs = lr if isinstance(lr, dict) else {name: lr for name in algorithms}
seeds = tuple(range(seed, seed + seeds)) if isinstance(seeds, int) else tuple(seeds)  # a count, or the seeds

if preset == "tiny":
    torch.set_num_threads(1)  # the tiny model's matrices are too small to gain from threads; rollouts are tiny steps
run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
tokenizer = load_tokenizer(paths["tokenizer"])
sft_dir = ensure_stage("sft", run_dir, paths, preset, device, dtype=dtype, seed=seed)  # chapter 08's model, or built now
sft = MiniMindForCausalLM.from_pretrained(sft_dir).eval()

# %% [markdown]
# ## A task with room to learn
# RL can only reinforce what the model already does *sometimes*: a reply that never earns the reward never
# gets pushed up. So the task must start neither at 0 (no signal) nor near 100% (nothing to gain). Small sums
# look like a natural verifiable task, but the tiny SFT model has not learned arithmetic, and a reward that
# is nearly always 0 has nearly nothing to reinforce. Raising it would mean *learning arithmetic* from
# one-bit rewards, far more rollouts than a CPU chapter can afford. Sampled at the rollout temperature:

# %%
world = load_world(paths["rl"].parent) if data == "course" else None
if world:
    sums = [dict(zip(("op", "a", "b"), t)) for t in world["arith"]["sft"]]
    torch.manual_seed(0)
    questions = [[{"role": "user", "content": f"What is {s['a']} {s['op']} {s['b']}?"}] for s in sums]
    replies = generate_replies(sft, tokenizer, questions, max_new_tokens=max_new_tokens, do_sample=True,
                               temperature=temperature)
    right = [answer_matches(r, str(s["a"] + s["b"] if s["op"] == "plus" else s["a"] - s["b"]))
             for r, s in zip(replies, sums)]
    print(f"sums the SFT data taught: {np.mean(right):.0%} of {len(sums)} sampled answers right, e.g. "
          f"{replies[0]!r} for {sums[0]['a']} {sums[0]['op']} {sums[0]['b']}")

# %% [markdown]
# The course's RL prompts are a task with room: **questions about facts the SFT model knows, in words it
# was never asked them in** (`rl_ask` in `minimind/data/lexicons/en.json`). Asked "Where does Mavi live?" it
# answers; asked "Where is Mavi from?" it often answers another question about Mavi (the pet, say). It
# knows every answer; what RL has to teach is which question is being asked. The prompts are split by
# **subject**: the held-out file (`rl_val.jsonl`) asks about people and places that no training prompt
# mentions, so a gain there is a skill that transfers, not memorised prompts.
#
# The rule reward (`minimind.align.reward.RuleReward`) gives 1 when the reply's final answer is right and
# 0 otherwise: a word must appear as a whole word; for a number, the *last* number in the reply must equal
# it. Checkable is not the same as ungameable: a reply that names every town contains the right one as a
# whole word, and the rule pays it in full (the last example below). A policy finds such a hole if sampling
# ever stumbles into it, since it pays as well as the answer; the per-wording table after training shows
# what the runs here learned, and what some of them lost.

# %%
# NBVAL_CHECK_OUTPUT
train_prompts = RLPromptDataset(paths["rl"], tokenizer, max_len=max_prompt_tokens)
val_records = read_jsonl(paths["rl_val"], "rl") if paths.get("rl_val") else []
distinct = {p["prompt"] for p in train_prompts}
print(f"{len(train_prompts)} training prompts ({len(distinct)} distinct), {len(val_records)} held-out prompts")
if val_records:
    print(repr(val_records[0]["conversations"][-1]["content"]), "-> answer", repr(val_records[0]["answer"]))
rule = RuleReward()
for reply, answer in [("Mavi lives in Bimur.", "Bimur"), ("Mavi has a dog called Ba.", "Bimur"),
                      ("Mavi is 30 years old.", "30"), ("Mavi is 30, not 31.", "30")]:
    print(f"  {reply!r:30} answer {answer!r:8} -> reward {rule.score(reply, answer)}")
if world:
    towns = sorted({f["value"] for f in world["facts"] if f["relation"] == "home"})
    every = f"Mavi lives in {', '.join(towns[:-1])} or {towns[-1]}."
    print(f"  {every!r} answer 'Bimur' -> reward {rule.score(every, 'Bimur')}")

# %% [markdown]
# ## Before: the SFT model on the held-out prompts
# Two accuracies: **greedy** (the likeliest reply: what a user sees) and **sampled** at the rollout
# temperature (what RL sees: the reward per rollout starts there). As a control, the same held-out facts
# asked in the SFT data's own words show that the model knows them.

# %%
def heldout(model, seed=0):
    """Greedy (rl_accuracy) and sampled accuracy on the held-out prompts; rows: each greedy reply."""
    if not val_records or not any(r.get("answer") for r in val_records):
        return {"greedy": float("nan"), "sampled": float("nan"), "rows": []}
    model.eval()
    greedy = rl_accuracy(model, tokenizer, paths["rl_val"], max_new_tokens=max_new_tokens)
    torch.manual_seed(seed)
    replies = generate_replies(model, tokenizer, [r["conversations"] for r in val_records],
                               max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
    sampled = np.mean([answer_matches(s, r["answer"]) for s, r in zip(replies, val_records)])
    return {"greedy": greedy["accuracy"], "sampled": float(sampled), "rows": greedy["rows"]}


before = heldout(sft)
print(f"SFT model on {len(before['rows'])} held-out prompts: {before['greedy']:.1%} greedy, "
      f"{before['sampled']:.1%} sampled")
if world:
    plain = []
    for r in before["rows"]:
        rel, _, fields = wording(r["question"])
        plain.append({"question": LEXICONS["en"]["relations"][rel]["ask"][0].format(**fields), "answer": r["answer"]})
    known = generate_replies(sft, tokenizer, [[{"role": "user", "content": p["question"]}] for p in plain],
                             max_new_tokens=max_new_tokens)
    known_acc = np.mean([answer_matches(k, p["answer"]) for k, p in zip(known, plain)])
    print(f"the same facts asked in the SFT data's words, e.g. {plain[0]['question']!r}: {known_acc:.1%} greedy")
for r in [r for r in before["rows"] if not r["correct"]][:4]:
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
#
# **PPO** asks a critic $V(s_t)$, a second network, for the reward to expect from each prefix of the reply,
# and credits each token with what happened after it beyond that expectation (GAE). Here the critic starts
# at $V = 0$ and learns from the same rollouts, so PPO's first advantages are the raw rewards (whitened: minus
# their batch mean), and they become sharper as the critic learns which prompts it gets right.

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
ax.set(xlabel="visit", ylabel="baseline b", ylim=(-0.05, 1.05),
       title="SPO baselines: one global tracker vs one per prompt")
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
# ### The losses, written out
# Each line below is one function of `minimind/align/rl.py`, checked on numbers small enough to redo by hand.
#
# - **PPO** (Proximal Policy Optimization, Schulman et al. 2017), `ppo_policy_loss`: with the ratio
#   $\rho_t = \pi_\theta(y_t) / \pi_{\text{old}}(y_t)$ of the token's probability now and when it was sampled,
#   the loss per token is $-\min(\rho_t A_t,\ \text{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\, A_t)$. The clip
#   stops the gain, never the loss: a token whose ratio has already moved *in its advantage's direction*
#   past $1 \pm \epsilon$ gets no more gradient, while one that moved the wrong way keeps its full gradient.
# - **GAE** (Generalized Advantage Estimation, Schulman et al. 2016), `gae`: from the critic's values $V_t$,
#   $\delta_t = r_t + \gamma V_{t+1} - V_t$ and $A_t = \delta_t + \gamma \lambda A_{t+1}$ (here $\gamma = 1$,
#   $\lambda = 0.95$, the reward on the last token); the critic learns $R_t = A_t + V_t$.
# - **PPO's value loss**, `ppo_value_loss`: $\tfrac12 \max\big((V - R)^2, (V^{\text{clip}} - R)^2\big)$, the
#   critic's step clipped around its old values like the policy's.
# - **The KL term** (GRPO, SPO; PPO puts it in the reward), `k3_kl`: with $d = \log \pi_{\text{ref}} - \log
#   \pi_\theta$, $k_3 = e^{d} - d - 1$ (Schulman's "k3" estimator): never negative, 0 when the two agree.
# - **GRPO** (Group Relative Policy Optimization, Shao et al. 2024, DeepSeekMath) uses PPO's clipped term
#   with the group-normalised $A$ above, plus $\beta k_3$; **SPO** (Single-stream Policy Optimization) the
#   same with $A = r - b$ from its tracker.

# %%
# NBVAL_CHECK_OUTPUT
from minimind.align.rl import gae, k3_kl, ppo_policy_loss

ones = torch.ones(1, 1)
for A in (1.0, -1.0):
    cells = []
    for ratio in (0.7, 1.0, 1.3):
        logp = torch.tensor([[math.log(ratio)]], requires_grad=True)  # log pi; log pi_old = 0
        loss, _ = ppo_policy_loss(logp, torch.zeros(1, 1), A * ones, ones, clip=0.2)
        loss.backward()
        cells.append(f"ratio {ratio}: loss {loss.item():+.2f}, gradient {logp.grad.item():+.2f}")
    print(f"PPO, A = {A:+.0f}:  " + ";  ".join(cells))
adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.8]]), torch.ones(1, 3))
print(f"GAE, rewards [0, 0, 1], values [0.5, 0.6, 0.8]: delta [0.1, 0.2, 0.2] -> A "
      f"{[round(a, 4) for a in adv[0].tolist()]}, critic targets {[round(r, 4) for r in ret[0].tolist()]}")
print(f"k3, pi = 0.5, ref = 0.25: {k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))).item():.4f} "
      f"(= 0.5 + ln 2 - 1); pi = ref: {k3_kl(torch.tensor(-1.0), torch.tensor(-1.0)).item():.1f}")

# %% [markdown]
# By hand: with $A = +1$ the ratio 1.3 is clipped to 1.2 and its gradient is 0 (no more gain), while 0.7 is
# not clipped; with $A = -1$ it is the other way round. GAE: $A_2 = 0.2$, $A_1 = 0.2 + 0.95 \cdot 0.2 = 0.39$,
# $A_0 = 0.1 + 0.95 \cdot 0.39 = 0.4705$.

# %% [markdown]
# ## Train the three side by side
# Same SFT start, same prompts, same rule reward and the same number of generated responses per step
# (`responses`): PPO and SPO answer that many prompts once each, GRPO answers `responses // group_size`
# prompts `group_size` times each. PPO reuses each rollout for two optimizer steps and trains a critic
# beside the policy, so it generates half as many responses in all, and takes half SPO's learning rate:
# two steps on one rollout move it about as far as one step at the full rate. Reuse is safe because of
# the clip: once a token's probability has moved more than $\epsilon$ (0.2) away from the policy that
# sampled it, the clipped ratio stops rewarding further moves in that direction. The rollouts are a
# visible step of the loop: each optimizer step first asks the stage for its batches (`step_batches`),
# and an RL stage generates them there, before any backward pass.
#
# The nine runs (three algorithms, three seeds) train side by side, one per CPU core, each in its own
# process with one thread (`train_side_by_side`): a rollout is hundreds of tiny steps that leave a second
# thread idle, so two one-thread runs get through more than one two-thread run. A run's numbers are those it
# gives alone on one thread (a test checks it), so they do not depend on how many cores your machine has.
# On a GPU the runs go one after another.
#
# The learning rates and the KL weight were chosen by measurement: `tune=True` reruns the sweep (one seed
# per setting, held-out greedy accuracy and the final KL). Too high a rate and the policy runs away from the
# reference and loses what SFT taught it; within the range swept, the KL weight changes the drift more than
# the accuracy. GRPO's gradient is the noisiest of the three: it comes from 4 prompts a step (PPO and SPO
# see 32), and at SPO's rate one of its runs in one course run lost reward halfway and ended inside its
# seeds' spread; at PPO's rate, 1e-4, its gain clears its seeds' spread in every course run on the
# robustness page (book/robustness.md). A short warm-up matters for the same reason: Adam's first steps are
# as large as the learning rate whatever the gradient's noise.

# %%
has_answers = bool(val_records) and any(r.get("answer") for r in val_records)
reward_fn = reward if has_answers or reward != "rule" else RuleReward(answer=0.0, length=1.0, repetition=1.0)
if reward_fn is not reward:
    print("no checkable answers in these prompts: the rule reward is only the length and repetition penalties")


def rl_job(name, out, seed, lr, beta, steps=max_steps):
    """train_stage's arguments for one RL run (files and numbers only, so that a worker process can take it)."""
    options = {"ppo": dict(kl_coef=beta, critic_lr=critic_lr), "grpo": dict(group_size=group_size, beta=beta),
               "spo": dict(beta=beta, baseline=spo_baseline)}[name]
    kw = {**options, "reward": reward_fn, "max_new_tokens": max_new_tokens, "temperature": temperature}
    return dict(stage=name, out=out, data=paths["rl"], tokenizer=paths["tokenizer"], init=sft_dir, stage_kwargs=kw,
                max_steps=steps, batch_size=responses // group_size if name == "grpo" else responses,
                lr=lr, warmup_steps=warmup_steps, seed=seed, seq_len=max_prompt_tokens, device=device, dtype=dtype,
                progress=False)


def train_rl(name, out, seed, lr, beta, steps=max_steps):
    return train_stage(**rl_job(name, out, seed, lr, beta, steps))


if tune:
    print(f"{'':5} {'lr':>7} {'KL weight':>9} {'held-out greedy':>16} {'KL':>6}")
    for name in algorithms:
        for lr_try, beta_try in [(lrs[name] / 2, kl_beta), (lrs[name], kl_beta), (lrs[name] * 2, kl_beta),
                                 (lrs[name], 0.0), (lrs[name], kl_beta / 5)]:
            s = train_rl(name, run_dir / "rl_tune" / name, seeds[0], lr_try, beta_try)
            kl_end = np.mean([m["kl"] for m in read_metrics(run_dir / "rl_tune" / name)[-3:]])
            print(f"{name:5} {lr_try:7.0e} {beta_try:9.3f} {heldout(s['model'])['greedy']:16.1%} {kl_end:6.3f}")

# %%
# the first seed's checkpoint is the chapter's (and chapter 13's) run_dir/NAME; the others are kept apart
jobs = {(name, seed): rl_job(name, run_dir / name if seed == seeds[0] else run_dir / "rl_seeds" / f"{name}_seed{seed}",
                             seed, lrs[name], kl_beta)
        for name in algorithms for seed in seeds}
after, metrics, summaries = {}, {}, {}
for (name, seed), s in train_side_by_side(jobs, workers=side_by_side_workers(device)):
    out = jobs[name, seed]["out"]  # scored as soon as it is done, while the other runs go on
    after[name, seed] = heldout(MiniMindForCausalLM.from_pretrained(out), seed)
    metrics[name, seed], summaries[name, seed] = read_metrics(out), s
wall = {key: s["wall_time"] for key, s in summaries.items()}
for name, seed in jobs:
    print(f"{name} seed {seed}: {summaries[name, seed]['steps']} steps in {wall[name, seed]:.0f} s; held-out greedy "
          f"{before['greedy']:.1%} -> {after[name, seed]['greedy']:.1%}")

# %% [markdown]
# ## Reward and KL during training
# The reward per rollout is the fraction of sampled replies that are right. Thin lines are the seeds, the
# thick line their mean (running mean over 5 rollouts). KL is the k3 estimate over each rollout's tokens:
# how far the policy has moved from the SFT model where it actually writes.


# %%
def curve(records, key, name):
    """A metric per rollout: PPO logs each of its rollouts once per reuse, so keep one of each."""
    reuse = 2 if name == "ppo" else 1
    return np.array([m[key] for m in records if key in m][::reuse])


def running(x, k=5):
    return np.array([x[max(0, i - k + 1):i + 1].mean() for i in range(len(x))])


fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for i, name in enumerate(algorithms):
    for key, ax in (("reward_mean", axes[0]), ("kl", axes[1])):
        runs_ = [curve(metrics[name, seed], key, name) for seed in seeds]
        x = np.linspace(0, 1, len(runs_[0]))
        for r in runs_:
            ax.plot(x, running(r), color=f"C{i}", alpha=0.3, lw=1)
        ax.plot(x, running(np.mean(runs_, 0)), color=f"C{i}", lw=2, label=name)
axes[0].set(title="reward per rollout", xlabel="fraction of the run", ylim=(0, 1) if has_answers else None)
axes[1].set(title="KL to the reference", xlabel="fraction of the run")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plt.show()


def reward_change(records, name):
    """Mean reward over the first and the last 10% of the rollouts, and the standard error of their difference.
    The noise comes from the whole curve: successive differences cancel its trend, var(r_t+1 - r_t) = 2 sigma^2."""
    r = curve(records, "reward_mean", name)
    k = max(2, round(len(r) / 10))
    sigma = np.sqrt(np.mean(np.diff(r) ** 2) / 2)
    return r[:k].mean(), r[-k:].mean(), sigma * np.sqrt(2 / k)


# %% [markdown]
# ### What each estimator did to the advantages
# The same rollouts, three baselines. Left, PPO's critic: the value it predicts at the start of a reply
# (averaged over the rollout) learns the reward from scratch, and until it does, PPO's advantages are
# little more than the rewards minus their batch mean. Middle, GRPO: the share of groups whose replies all
# scored the same (all wrong at first, more often all right later) and so had advantage 0: a large part of
# every rollout teaches nothing. Right, SPO: the baseline its global tracker offered, against the reward the
# rollout actually earned: it starts from its prior and then trails the reward by a few steps, so while the
# reward climbs, a right reply beats it by more than a wrong one falls short.

# %%
panels = [(n, key, label) for n, key, label in (("ppo", "value_mean", "PPO: critic's mean value"),
                                                 ("grpo", "zero_var_frac", "GRPO: groups with no signal"),
                                                 ("spo", "baseline", "SPO: tracker's baseline")) if n in algorithms]
fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
for ax, (name, key, label) in zip(axes[0], panels):
    i = algorithms.index(name)
    series = np.mean([curve(metrics[name, seed], key, name) for seed in seeds], 0)
    ax.plot(running(series, 3), color=f"C{i}", lw=2, label=label)
    if name != "grpo":
        reward_curve = np.mean([curve(metrics[name, seed], "reward_mean", name) for seed in seeds], 0)
        ax.plot(running(reward_curve, 3), color="grey", lw=1, label="reward per rollout")
    ax.set(xlabel="rollout", ylim=(-0.05, 1.05), title=label)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## After: held-out accuracy, seed by seed
# Each seed changes the order of the prompts and every sampled reply. The reward columns compare the first
# and the last 10% of the rollouts, with the standard error of that difference from the curve's own noise
# (z: the rise in standard errors).

# %%
rows = []
print(f"{'':11} {'greedy':>15} {'sampled':>15}   {'reward first -> last 10%':>28} {'z':>4} {'KL':>6} {'s':>4}")
print(f"{'SFT':11} {before['greedy']:15.1%} {before['sampled']:15.1%}")
for name in algorithms:
    for seed in seeds:
        first, last, se = reward_change(metrics[name, seed], name)
        a = after[name, seed]
        rows.append(dict(name=name, seed=seed, greedy=a["greedy"], sampled=a["sampled"], first=first, last=last, se=se,
                         kl=float(curve(metrics[name, seed], "kl", name)[-3:].mean())))
        print(f"{name} seed {seed} {before['greedy']:6.1%} -> {a['greedy']:5.1%} {before['sampled']:6.1%} -> "
              f"{a['sampled']:5.1%}   {first:.2f} -> {last:.2f} ({last - first:+.2f} +- {se:.2f}) "
              f"{(last - first) / se:4.1f} {rows[-1]['kl']:6.3f} {wall[name, seed]:4.0f}")
summary = {}
for name in algorithms:
    mine = [r for r in rows if r["name"] == name]
    g = np.array([r["greedy"] for r in mine])
    gain = np.mean([r["last"] - r["first"] for r in mine])
    summary[name] = dict(greedy=g.mean(), greedy_std=g.std(ddof=1) if len(g) > 1 else 0.0, greedy_spread=np.ptp(g),
                         sampled=np.mean([r["sampled"] for r in mine]), reward_gain=gain,
                         reward_se=np.sqrt(np.sum([r["se"] ** 2 for r in mine])) / len(mine),
                         kl=np.mean([r["kl"] for r in mine]), every_seed_up=bool((g > before["greedy"]).all()))
    print(f"{name:5} mean of {len(mine)} seeds: greedy {summary[name]['greedy']:.1%} (seed sd "
          f"{summary[name]['greedy_std']:.1%}; SFT {before['greedy']:.1%}), sampled {summary[name]['sampled']:.1%}, "
          f"reward {gain:+.2f} +- {summary[name]['reward_se']:.2f}")

# %% [markdown]
# The facts this chapter rests on, printed without the numbers that a different CPU's arithmetic could
# move: every seed beats the SFT model on the held-out prompts, and the mean gain is larger than the spread
# between the seeds. (How far the SFT model starts, and so how much room RL has, depends on the seed and the
# CPU that trained chapters 07 and 08. The robustness page shows, course run by course run, where every
# algorithm's gain stays above its seeds' spread at 60 steps, and where one does not.) The reward per rollout
# is in the table above, with its noise (the z column: the rise over its standard error).

# %%
# recorded before the check below: a run where it fails still shows its numbers (book/robustness.md)
result = {"task": "course facts in new words", "heldout_prompts": len(val_records), "seeds": len(seeds),
          "steps": max_steps, "responses_per_step": responses, "sft_heldout_accuracy": round(before["greedy"], 4),
          "sft_heldout_sampled": round(before["sampled"], 4)}
for name in algorithms:
    s = summary[name]
    result.update({f"{name}_heldout_accuracy": round(s["greedy"], 4),
                   f"{name}_heldout_accuracy_std": round(s["greedy_std"], 4),
                   f"{name}_heldout_accuracy_spread": round(s["greedy_spread"], 4),
                   f"{name}_heldout_sampled": round(s["sampled"], 4), f"{name}_reward_gain": round(s["reward_gain"], 4),
                   f"{name}_kl": round(s["kl"], 4), f"{name}_lr": lrs[name],
                   f"{name}_train_seconds": round(float(np.mean([wall[name, seed] for seed in seeds])), 1)})
record(run_dir, "11_rl", **result)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(val_records)} held-out prompts, {len(seeds)} seeds per algorithm")
if has_answers:
    for name in algorithms:
        s = summary[name]
        print(f"{name}: every seed beats SFT: {s['every_seed_up']}; mean gain above the seeds' spread: "
              f"{s['greedy'] - before['greedy'] > s['greedy_spread']}")
    learned = all(s["every_seed_up"] and s["greedy"] - before["greedy"] > s["greedy_spread"] for s in summary.values())
    print("every algorithm learned:", learned)
    assert learned, "an algorithm did not beat the SFT model by more than its seeds' spread: see the table above"

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
for j, kind in enumerate(("greedy", "sampled")):
    ax.bar(j - 0.3, before[kind], 0.2, color="grey", label="SFT" if j == 0 else None)
    for i, name in enumerate(algorithms):
        vals = [after[name, seed][kind] for seed in seeds]
        x = j - 0.1 + 0.2 * i
        ax.bar(x, np.mean(vals), 0.2, color=f"C{i}", label=name if j == 0 else None)
        ax.errorbar(x, np.mean(vals), yerr=[[np.mean(vals) - min(vals)], [max(vals) - np.mean(vals)]], color="k",
                    capsize=3)
        ax.plot([x] * len(vals), vals, "k.", ms=4)
ax.set(xticks=[0, 1], xticklabels=["greedy", f"sampled (T = {temperature})"], ylim=(0, 1.15), ylabel="held-out accuracy",
       title=f"{len(val_records)} held-out prompts; bars: mean of {len(seeds)} seeds, whiskers and dots: each seed")
ax.title.set_fontsize(9)
ax.legend(fontsize=8, ncol=4, loc="upper center")
plt.show()

# %% [markdown]
# ## What RL fixed, what it broke, and what it could not
# Held-out questions the SFT model got wrong and every algorithm got right after training (first seed):

# %%
fixed = [i for i, r in enumerate(before["rows"]) if not r["correct"] and
         all(after[name, seeds[0]]["rows"][i]["correct"] for name in algorithms)]
for i in fixed[:3]:
    print(f"{before['rows'][i]['question']!r} (answer {before['rows'][i]['answer']})")
    print(f"   SFT : {before['rows'][i]['output']!r}")
    for name in algorithms:
        print(f"   {name:4}: {after[name, seeds[0]]['rows'][i]['output']!r}")
for name in algorithms:
    flips = [(b["correct"], a["correct"]) for b, a in zip(before["rows"], after[name, seeds[0]]["rows"])]
    print(f"{name}: {sum(not b and a for b, a in flips)} held-out answers fixed, "
          f"{sum(b and not a for b, a in flips)} broken")

# %% [markdown]
# By wording (greedy accuracy on the held-out prompts, mean over seeds). A wording the SFT model almost
# never answers right, even when sampling, gives RL next to nothing to reinforce; one it sometimes gets
# right is soon learned, for people RL never asked about. And RL does not only add: the policy learns
# what the reward pays for *on average*, and a wording that looks like better-paid ones can lose its
# answers to theirs.

# %%
if world and before["rows"]:
    templates = [wording(r["question"])[1] for r in before["rows"]]
    by_wording = {}
    print(f"{'wording':42} {'n':>3} {'SFT':>5} " + " ".join(f"{n:>5}" for n in algorithms))
    for tpl in dict.fromkeys(templates):
        idx = [i for i, t in enumerate(templates) if t == tpl]
        acc = lambda rows: np.mean([rows[i]["correct"] for i in idx])  # noqa: E731
        by_wording[tpl] = {"SFT": acc(before["rows"]), **{n: np.mean([acc(after[n, s]["rows"]) for s in seeds])
                                                          for n in algorithms}}
        print(f"{tpl:42} {len(idx):3} " + " ".join(f"{v:5.0%}" for v in by_wording[tpl].values()))
    never = [t for t, v in by_wording.items() if max(v.values()) == 0]
    print("never answered right, before or after:", never)
    tpl, name = min(((t, n) for t in by_wording for n in algorithms), key=lambda tn: by_wording[tn[0]][tn[1]]
                    - by_wording[tn[0]]["SFT"])
    if by_wording[tpl][name] < by_wording[tpl]["SFT"]:
        print(f"the largest loss: {name} on {tpl!r}, {by_wording[tpl]['SFT']:.0%} -> {by_wording[tpl][name]:.0%}, "
              "e.g.")
        for i in [i for i, t in enumerate(templates) if t == tpl and before["rows"][i]["correct"]
                  and not after[name, seeds[0]]["rows"][i]["correct"]][:2]:
            print(f"   {before['rows'][i]['question']!r}: {before['rows'][i]['output']!r} -> "
                  f"{after[name, seeds[0]]['rows'][i]['output']!r}")

# %% [markdown]
# ### Why the three estimators differ
# All three learn the task; read side by side, they show what their baselines cost and buy.
#
# - **GRPO** gets its baseline for free from the group, centred on the very prompt it answers, but pays
#   twice: it answers G times fewer prompts per step, so each step's gradient rests on a handful of
#   prompts (its reward curve is the noisiest), and every group that is all right or all wrong is
#   thrown away (the middle panel).
# - **SPO** answers as many prompts as PPO with no second network. Its global baseline is one number for
#   all prompts, so a right reply to an easy prompt still gets a positive push and a wrong reply to a hard
#   one a negative push; while the reward climbs the tracker lags, and most right replies beat it. Here,
#   where one skill (reading the question) serves every prompt, that cheap signal is enough.
# - **PPO** credits each token separately through its critic, the finest-grained signal of the three, but
#   the critic starts knowing nothing and learns from the same rollouts, each used twice. It costs the
#   most per step: a second network, forward and backward, for the same responses.
#
# The KL column is the price: each method moved the policy away from the SFT model to earn its reward, and
# a larger KL weight (`kl_beta`) holds it closer. On a GPU the same chapter runs MiniMind's recipe
# (`preset="minimind2-small", data="minimind"`): rlaif-mini's open prompts, scored by a reward model, with
# MiniMind's group size, lengths and learning rates (the parameters cell).

# %% [markdown]
# ## Where we differ from MiniMind
# - **PPO.** MiniMind's `trainer/train_ppo.py` (at its minimind-3 commit d65ef2c) has what this chapter's PPO
#   has: a separate critic (the SFT model with a value head), GAE with $\gamma = 1$ and $\lambda = 0.95$,
#   advantages whitened over the batch, the policy and the value clipped at 0.2, two passes over each rollout.
#   It adds the KL to the reference (the k3 estimate, weight 0.02) to the *loss*; we put a per-token KL
#   penalty into the *reward* (InstructGPT's form, `kl_coef`), so our critic learns the penalised return. It
#   also stops a rollout's updates early when their approximate KL passes 0.25; ours does not.
# - **GRPO.** MiniMind's `trainer/train_grpo.py` now defaults to CISPO's loss (chapter 14); its
#   `--loss_type grpo` is the clipped surrogate used here, with the same k3 KL term and the same mean over each
#   answer's tokens, then over answers. It divides by the group's population standard deviation, where we
#   take the sample one (larger by $\sqrt{G/(G-1)}$: 7% for groups of 8), and samples 6 answers per prompt.
# - **SPO.** minimind-3 removed MiniMind2's `train_spo.py`; ours keeps its global baseline as the default
#   (`spo_baseline`), and the SPO paper's per-prompt one as the alternative.
# - **Rewards.** MiniMind scores open-ended replies with a reward model (InternLM2-1.8B-Reward) plus terms for
#   length, the think format and repetition; this chapter uses the rule reward on checkable answers, which a
#   CPU can afford, and which `reward=FOLDER` swaps for a reward model.

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. GRPO's advantages (implement).** Write `grpo_advantages(rewards, group_size)` for rewards laid out group
# by group: each reward minus its group's mean, over the group's standard deviation (+ 1e-4), and 0 for a group
# whose rewards are all equal. The check uses the rewards of "Advantages by hand" above.

# %%
def grpo_advantages(rewards, group_size):
    ...  # your code: (N,)


check("11.grpo_advantages", grpo_advantages)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def grpo_advantages(rewards, group_size):
    groups = rewards.float().view(-1, group_size)                # (groups, G)
    mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)
    adv = torch.where(std < 1e-6, torch.zeros_like(groups), (groups - mean) / (std + 1e-4))
    return adv.reshape(-1)


assert check("11.grpo_advantages", grpo_advantages)

# %% [markdown]
# **2. The KL estimate (implement).** Write `k3(logp, ref_logp)`, the per-token estimate of KL(π ‖ ref) the
# chapter uses. The check tells you if some of your estimates are negative (a KL never is).

# %%
def k3(logp, ref_logp):
    ...  # your code


check("11.k3", k3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def k3(logp, ref_logp):
    d = ref_logp - logp
    return torch.exp(d) - d - 1  # exp(d) - 1 >= d, so never negative


assert check("11.k3", k3)

# %% [markdown]
# **3. The clip (predict).** A token with advantage +1 whose probability ratio has reached 1.3, with the clip at
# 0.2: what is the gradient of PPO's loss with respect to its log-probability?

# %%
clipped_gradient = None  # your answer
check("11.clipped_gradient", clipped_gradient)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: past 1 + 0.2 in the direction the advantage pushes, the clipped term (constant in r) is the one taken
clipped_gradient = 0.0
assert check("11.clipped_gradient", clipped_gradient)
