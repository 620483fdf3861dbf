# DRAFT (issue 16): the agentic RL half of chapter 14. Not executed, not in the book: agentic RL has not yet
# raised held-out task success at all on the tiny course, let alone beyond the seed spread. It continues
# notebooks/14_tools.py: run that chapter's cells first (it uses tool_sft_dirs, tool_tokenizer, tools, course,
# run_dir, seeds, kinds).
#
# What the runs so far say (single seeds, 20-60 steps of 32-64 episodes, CPU; issue 16's notes have the table):
# - Every setting lowered greedy held-out success (e.g. 42.5% -> 24-30% on tool_eval from the float32 seed-0
#   tool-SFT model; 27.5% -> 7.5-26% on tool_rl_val), while the sampled training reward stayed flat.
# - The seed-0/1 models fail by miscopying names and numbers; a copy error is specific to its prompt, so pushing
#   one episode's tokens up teaches little that transfers, and the noise erodes the fragile copying skill.
#   Chapter 11's RL works because its error is a choice that transfers (which fact a wording asks for).
# - The per-call format reward paid for extra calls (1.1 -> 1.6 calls per episode); it is now per episode.
# Next: an RL task whose error is such a choice (wordings the SFT model maps to the right tool or fact only
# sometimes when sampled), and groups with no reward variance skipped or resampled.

# %%
loss = "cispo"           # agentic RL: cispo (MiniMind's default) | grpo
agent_steps = 30         # agentic RL: optimizer steps per run
responses = 32           # agentic RL: episodes per step (responses // group_size prompts, group_size times each)
group_size = 8
agent_lr = 1e-4
kl_beta = 0.02
temperature = 0.8        # MiniMind's train_agent.py samples at 0.8

# %% [markdown]
# ## Agentic RL
# SFT taught the format on the questions' own wordings. The agent RL prompts (`tool_rl.jsonl`) ask for the
# training facts, and new sums, in **other words** ("Tell me Mavi's house number.") that tool SFT never used;
# the held-out prompts (`tool_rl_val.jsonl`) ask the held-out facts in those words. The `agent` stage
# (`minimind/align/agent.py`, MiniMind's `train_agent.py`) samples `group_size` episodes per prompt, rewards
# each with 1 when its final answer is right (`RuleReward`) plus a small format reward when the episode's calls
# were all well-formed (minus it for a broken one), and normalises the rewards within each group, as GRPO does. The loss
# covers only the tokens the model wrote: the tool results sit in the sequence for it to read, masked out of
# the loss.
#
# **CISPO** (MiniMind's default) differs from GRPO in one place. GRPO clips the probability ratio
# $r = \pi_\theta / \pi_{old}$ of each token inside $[1 - \epsilon, 1 + \epsilon]$, and a token whose ratio has
# left that range gets no gradient at all. In an episode, the few tokens that decide the outcome (which tool,
# which name) are exactly the ones whose probability moves most. CISPO keeps every token's gradient and
# clips the *weight* instead: the loss is $-\,\text{sg}(\min(r, \epsilon_{high}))\, A \log \pi_\theta$, the
# importance weight held constant.

# %%
rl_val = read_jsonl(course["tool_rl_val"], "rl")
print(f"{len(read_jsonl(course['tool_rl'], 'rl'))} RL prompts, {len(rl_val)} held-out, e.g. "
      f"{rl_val[0]['conversations'][-1]['content']!r}")


def agent_run(seed):
    out = run_dir / "agent" if seed == seeds[0] else run_dir / "tool_seeds" / f"agent_seed{seed}"
    if not stage_done(out):
        options = dict(tools=f"course:{course['registry']}", loss=loss, group_size=group_size, beta=kl_beta,
                       max_turns=max_turns, max_new_tokens=max_new_tokens, temperature=temperature)
        train_stage("agent", out, data=course["tool_rl"], init=tool_sft_dirs[seed], stage_kwargs=options,
                    max_steps=agent_steps, batch_size=responses // group_size, lr=agent_lr, warmup_steps=5,
                    seed=seed, seq_len=512, device=device, dtype=dtype, progress=False)
    return out


def rl_accuracy_of(folder):
    return tool_task_accuracy(MiniMindForCausalLM.from_pretrained(folder).eval(), tool_tokenizer, rl_val, tools,
                              max_turns=max_turns, max_new_tokens=max_new_tokens)


before = {seed: rl_accuracy_of(d) for seed, d in tool_sft_dirs.items()}
agent_dirs = {seed: agent_run(seed) for seed in seeds}
after = {seed: rl_accuracy_of(d) for seed, d in agent_dirs.items()}

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for seed, d in agent_dirs.items():
    m = read_metrics(d)
    for ax, key in zip(axes, ("task_reward", "tool_calls")):
        ax.plot([r["step"] for r in m if key in r], [r[key] for r in m if key in r], alpha=0.7, label=f"seed {seed}")
axes[0].set(xlabel="step", ylabel="fraction right", title="task reward per rollout")
axes[1].set(xlabel="step", ylabel="calls per episode", title="tool calls")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'held-out RL prompts':22} {'before':>8} {'after':>8}  " + " ".join(f"{k:>7}" for k in kinds))
for seed in seeds:
    b, a = before[seed], after[seed]
    print(f"{f'seed {seed}':22} {b['accuracy']:8.1%} {a['accuracy']:8.1%}  "
          + " ".join(f"{a['by_kind'][k]:7.1%}" for k in kinds))
gains = np.array([after[s]["accuracy"] - before[s]["accuracy"] for s in seeds])
print(f"agentic RL gain {gains.mean():+.1%} (per seed {', '.join(f'{g:+.1%}' for g in gains)}; "
      f"spread {gains.max() - gains.min():.1%})")
assert gains.min() > gains.max() - gains.min() and gains.min() > 0, "agentic RL did not clearly raise task success"

# %%
record(run_dir, "14_tools", vocab=tool_tokenizer.vocab_size, no_tools=round(without["accuracy"], 3),
       tool_sft=round(float(accs.mean()), 3), tool_sft_spread=round(float(accs.max() - accs.min()), 3),
       agent_before=round(float(np.mean([before[s]["accuracy"] for s in seeds])), 3),
       agent_after=round(float(np.mean([after[s]["accuracy"] for s in seeds])), 3),
       agent_gain_spread=round(float(gains.max() - gains.min()), 3), loss=loss)

# %% [markdown]
# ## Try it
# The tool-SFT model chats with its tools in the terminal (`minimind chat runs/tiny/tool_sft --tools course`),
# and `minimind serve runs/tiny/agent` returns its calls to an OpenAI client as `tool_calls`, with
# `finish_reason: "tool_calls"`; the client runs them and sends the results back as `tool` messages.
