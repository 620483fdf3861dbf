# DRAFT (issue 16): the agentic RL half of chapter 14 (its tool-call half is notebooks/14_tools.py). Not executed,
# not in the book: 30 steps of agent RL did not yet raise held-out task success beyond the seed spread (issue notes).
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
# # 14 · Tool calls and agentic RL
#
# A language model knows what it read and computes what its weights can. Ask the course's model for a
# fact that is in no text it ever saw, or for a sum past the small ones its SFT data taught, and it can
# only guess. MiniMind's current generation (minimind-3) learns a way out: it writes a **tool call**, a
# short JSON request in `<tool_call>` tags; the program around the model runs the tool and hands the result
# back in a `tool` turn; the model reads it and answers. This chapter teaches the course's model the same:
#
# 1. **The template**: minimind-3's chat template, which lists the tools in the system turn and marks
#    calls and results with tags.
# 2. **A tokenizer that can read it**: the course tokenizer has never seen JSON; we *extend* it with new
#    merges and grow the model's embedding, keeping every old token's id.
# 3. **SFT on tool calls**: conversations in which the assistant calls a tool, reads the result and answers.
# 4. **Agentic RL**: the model runs whole episodes (call, read, maybe call again, answer) and learns from
#    whether the final answer was right, with GRPO or CISPO as MiniMind's `train_agent.py` does.
#
# The tools belong to the course world (`minimind.data.tools.course_tools`): `add` and `subtract`, and
# `lookup(name, fact)` in the **town register**, which holds each person's house number, weight, shoe size and
# age. The register's house numbers, weights and shoe sizes appear in no text of the corpus.

# %% tags=["parameters"]
preset = "tiny"
data = "course"          # the model chapter 08 fine-tuned (course | minimind); the tool files are the course world's
device = "auto"
out_dir = None
new_merges = 200         # merges the tokenizer learns from the tool conversations
sft_steps = None         # tool SFT: optimizer steps (None: the preset's recipe below)
sft_lr = 3e-3
seeds = (0, 1, 2)        # every measured gain is repeated with these seeds: the spread tells learning from luck
loss = "cispo"           # agentic RL: cispo (MiniMind's default) | grpo
agent_steps = None       # agentic RL: optimizer steps per run
responses = 32           # agentic RL: episodes per step (responses // group_size prompts, group_size times each)
group_size = 8
agent_lr = None
kl_beta = 0.02
max_turns = 3            # model turns per episode (a lookup, a sum and the answer)
max_new_tokens = 48      # per model turn
temperature = 1.0

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import HTML, display

from minimind import MiniMindForCausalLM
from minimind.course import data_paths, ensure_stage, record, runs_dir
from minimind.course.recipe import stage_done
from minimind.data import read_jsonl
from minimind.data.datasets import SFTDataset, render_record
from minimind.data.tokenizer import MiniMindTokenizer, extend_tokenizer, tokens_html
from minimind.data.tools import course_tools
from minimind.train import load_tokenizer, read_metrics, train_stage
from minimind.use.eval import tool_task_accuracy

RECIPES = {"tiny": dict(sft_steps=600, agent_steps=30, agent_lr=1e-4),
           "gpu": dict(sft_steps=1000, agent_steps=200, agent_lr=1e-6)}
recipe = RECIPES["tiny" if preset == "tiny" else "gpu"]
globals().update({key: value for key, value in recipe.items() if globals()[key] is None})
seeds = tuple(seeds)
if preset == "tiny":
    torch.set_num_threads(min(torch.get_num_threads(), 2))
run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
course = data_paths("course") if data != "course" else paths  # the tool files and the register
tokenizer = load_tokenizer(paths["tokenizer"])
sft_dir = ensure_stage("sft", run_dir, paths, preset, device)  # chapter 08's model, or built now
sft = MiniMindForCausalLM.from_pretrained(sft_dir).eval()
registry = json.loads(course["registry"].read_text())
tools = course_tools(registry["people"])

# %% [markdown]
# ## What the model cannot know
# The held-out tool tasks (`tool_eval.jsonl`) ask three kinds of question: a register fact that no training
# file ever states (**lookup**), a sum or difference of two-digit numbers (**sum**), and how old someone will be
# in some years (**later**: the age, then a sum). Chapter 08's model answers them from its weights:

# %%
# NBVAL_CHECK_OUTPUT
tasks = read_jsonl(course["tool_eval"], "rl")
kinds = sorted({t["kind"] for t in tasks})
print(f"{len(tasks)} held-out tool tasks: " + ", ".join(f"{sum(t['kind'] == k for t in tasks)} {k}" for k in kinds))
for k in kinds:
    t = next(t for t in tasks if t["kind"] == k)
    print(f"  {k:7} {t['conversations'][-1]['content']!r} -> {t['answer']}")

# %%
without = tool_task_accuracy(sft, tokenizer, tasks, toolbox=None, max_new_tokens=max_new_tokens)
print(f"chapter 08's model, no tools: {without['accuracy']:.1%} of {without['n']} "
      + "(" + ", ".join(f"{k} {v:.0%}" for k, v in without["by_kind"].items()) + ")")
for row in without["rows"][:3]:
    print(f"  {row['question']!r} -> {row['reply']!r} (answer {row['answer']})")

# %% [markdown]
# It answers fluently and wrongly: a fact it knows about the person instead of the one asked, a number that
# looks like a sum. The register's facts are not in its weights, and the sums are past what 2.8M parameters
# learned from a few thousand examples of sums to 10.
#
# ## The template
# minimind-3's chat template (`MINIMIND3_CHAT_TEMPLATE` in `minimind/data/tokenizer.py`, MiniMind's own,
# rendered natively in Python) writes the tools' JSON schemas into the system turn, between `<tools>` tags,
# with an instruction to answer calls in `<tool_call>` tags. An assistant turn that calls a tool holds only
# the call; the result comes back as a `user` turn wrapped in `<tool_response>`; then the assistant answers.
# Every assistant turn opens with a think block, empty here (`<think>\n\n</think>`). One tool-call SFT
# conversation from `tool_sft.jsonl`, in MiniMind's data format (the system turn carries `tools`, the
# assistant turn `tool_calls`):

# %%
# NBVAL_CHECK_OUTPUT
example = next(r["conversations"] for r in read_jsonl(course["tool_sft"], "sft")
               if sum(bool(m.get("tool_calls")) for m in r["conversations"]) == 1 and "lookup" in json.dumps(r))
for m in example:
    shown = {k: v for k, v in m.items() if k != "tools"}
    print(json.dumps(shown, ensure_ascii=False) + (f'  (+ "tools": {len(m["tools"])} schemas)' if "tools" in m else ""))
text, spans = render_record(example, "minimind3")
print("\n" + text[text.index("</tools>"):])

# %% [markdown]
# ## A tokenizer that can read it
# The course tokenizer learned its merges from the course's plain English. JSON is new to it: `"type"`,
# `"function"` and `"properties"` fall apart into letters. Rendered with the tools, a short conversation
# costs the tiny model hundreds of positions:

# %%
# NBVAL_CHECK_OUTPUT
texts = [render_record(r["conversations"], "minimind3")[0] for r in read_jsonl(course["tool_sft"], "sft")]
print(f"course tokenizer: {len(tokenizer.encode(text))} tokens for the conversation above, "
      f"{np.mean([len(tokenizer.encode(t)) for t in texts]):.0f} on average over {len(texts)} tool conversations")
print(tokenizer.tokenize('{"type": "function"}'))

# %% [markdown]
# Training a new tokenizer would mean a new model. Instead we **extend** the old one, as projects that
# teach an English model a new language do: `extend_tokenizer` continues BPE where it stopped. It splits the
# new text the way the old tokenizer does, counts the pairs of old tokens, and merges the most frequent pair,
# again and again (`new_merges` times). The new merges go after the old ones, so old text splits exactly as
# before, and every old token keeps its id. minimind-3's tags (`<tool_call>`, `<tool_response>` and their
# closing tags) become tokens of their own. Runs of whitespace are left unmerged, so a prompt that ends with
# the empty think block `</think>\n\n` is cut into the same tokens as the middle of a training conversation,
# where `\n\n` comes before the answer. (With a merged `\n\n` token, the model would see a token at the end of
# every prompt that it had only ever seen before a tool call.)

# %%
# NBVAL_CHECK_OUTPUT
tool_tokenizer = extend_tokenizer(tokenizer, texts, new_merges=new_merges, template="minimind3")
print(f"vocabulary {tokenizer.vocab_size} -> {tool_tokenizer.vocab_size}; "
      f"{len(tool_tokenizer.encode(text))} tokens for the conversation above, "
      f"{np.mean([len(tool_tokenizer.encode(t)) for t in texts]):.0f} on average")
print(tool_tokenizer.tokenize('{"type": "function"}'))
docs = [r["text"] for r in read_jsonl(paths["pretrain_val"], "pretrain", limit=300)] if "pretrain_val" in paths else []
same = sum(tokenizer.encode(d) == tool_tokenizer.encode(d) for d in docs)
print(f"held-out pretraining documents split exactly as before: {same} of {len(docs)}")

# %% [markdown]
# The model must grow with the vocabulary: `resize_token_embeddings` adds a row to the (tied) embedding for
# each new token, set to the mean of the old rows, so a new token starts as an average token rather than as
# noise the output layer would predict at random. Below, the tokens SFT learns from are green: the calls and
# the answer. The tools block and the tool's result are grey: the model reads them and is never trained to
# write them.

# %%
ids = tool_tokenizer.encode(text)
sample = SFTDataset([{"conversations": example}], tool_tokenizer, max_len=1024)[0]
display(HTML(tokens_html(tool_tokenizer, sample["input_ids"][-70:], sample["labels"][-70:])))


# %% [markdown]
# ## SFT on tool calls
# `tool_sft.jsonl` mixes four kinds of conversation: 40% look a fact up, 25% do a sum, 15% do both (the age,
# then the sum), and 20% are chapter 08's kind (questions about the world that the model answers from what
# it knows, half of them with the tools offered, so that it also learns when *not* to call).
#
# Two choices in that data decide whether the model learns to *read* the tool. First, three lookups in four
# ask about **strangers**: people of the register who appear in no other text, each asked once or twice. A
# model trained only on the world's 24 people would meet each of their facts 20 times and simply remember
# them: it would then answer a held-out fact with a remembered one, whatever the tool said (a first version of
# this chapter did exactly that: 48 of 48 training facts right, 1 of 24 held-out). Second, the tools answer
# in JSON (`{"weight": 63}`), so the number the model copies follows a space, as it does in the answer it
# writes. After the tool turn's newline, `63` would be another token than ` 63`, and copying would mean
# translating. For the same reason every number in these tasks is one token (two-digit numbers, as the
# course's ages are): a first version asked for heights and years of birth, split into two tokens each, and
# the tiny model copied the first token and guessed the second.
#
# Every tool conversation opens with the same system turn: the tools block, about 290 of its 370 tokens. The
# SFT stage's `shared_prefix` option runs that prompt once per batch instead of once per conversation: its
# keys and values are expanded to the batch's rows (`KVCache.expand`), which then run only their own tokens.
# The prompt holds no token the model learns, so the loss and the gradients are the same as running every row
# whole (`tests/test_shared_prefix.py` checks both); a step costs less than half.
#
# The held-out tasks ask, for each of the world's people, the one register fact no training conversation
# asks, and sums no training conversation does: a right answer there must have been read from the tool. The
# run starts from chapter 08's model, resized, and trains `sft_steps` steps, once per seed.

# %%
def tool_sft_run(seed):
    """run_dir/tool_sft (the first seed: the chapter's model) or run_dir/tool_seeds/sft_seedN, trained unless
    a finished run is there."""
    out = run_dir / "tool_sft" if seed == seeds[0] else run_dir / "tool_seeds" / f"sft_seed{seed}"
    if not stage_done(out):
        model = MiniMindForCausalLM.from_pretrained(sft_dir).resize_token_embeddings(tool_tokenizer.vocab_size)
        train_stage("sft", out, data=course["tool_sft"], val_data=course["tool_sft_val"], tokenizer=tool_tokenizer,
                    model=model, max_steps=sft_steps, lr=sft_lr, seed=seed, seq_len=512, device=device,
                    eval_every=sft_steps, progress=False, stage_kwargs=dict(shared_prefix=True))
    return out


tool_sft_dirs = {seed: tool_sft_run(seed) for seed in seeds}
with_tools = {seed: tool_task_accuracy(MiniMindForCausalLM.from_pretrained(d).eval(), tool_tokenizer, tasks, tools,
                                       max_turns=max_turns, max_new_tokens=max_new_tokens)
              for seed, d in tool_sft_dirs.items()}

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for seed, d in tool_sft_dirs.items():
    m = read_metrics(d)
    ax.plot([r["step"] for r in m if "loss" in r], [r["loss"] for r in m if "loss" in r], alpha=0.7,
            label=f"seed {seed}")
ax.set(xlabel="step", ylabel="loss on the assistant's tokens", title="tool SFT")
ax.legend()
ax.grid(alpha=0.3)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
accs = np.array([r["accuracy"] for r in with_tools.values()])
print(f"{'held-out tool tasks':24} {'all':>7} " + " ".join(f"{k:>7}" for k in kinds))
print(f"{'SFT, no tools':24} {without['accuracy']:7.1%} " + " ".join(f"{without['by_kind'][k]:7.1%}" for k in kinds))
for seed, r in with_tools.items():
    print(f"{f'SFT with tools, seed {seed}':24} {r['accuracy']:7.1%} " + " ".join(f"{r['by_kind'][k]:7.1%}" for k in kinds))
gain = accs.mean() - without["accuracy"]
print(f"gain {gain:+.1%} (seeds spread {accs.max() - accs.min():.1%})")
assert accs.min() - without["accuracy"] > accs.max() - accs.min(), "tool SFT did not clearly beat SFT without tools"

# %% [markdown]
# ## One episode, readably
# `agent_rollouts` (in `minimind/align/agent.py`) runs episodes for a batch of prompts at once: every model
# turn, the unfinished episodes generate together; the calls they wrote are parsed (`parse_tool_calls`:
# bad JSON becomes an error message for the model, never an exception) and run by the toolbox, which runs only
# its registered functions, checks their arguments against the schema and limits their time; the results
# are appended as a tool turn; an episode ends when the model answers without a call, or after `max_turns`.
# A "later" task needs two calls:

# %%
later = [i for i, t in enumerate(tasks) if t["kind"] == "later"]
first = with_tools[seeds[0]]
shown = next((i for i in later if first["rows"][i]["correct"]), later[0])
print(f"user: {tasks[shown]['conversations'][-1]['content']}")
for m in first["episodes"][shown]:
    if m.get("tool_calls"):
        for c in m["tool_calls"]:
            print(f"  assistant calls {c['name']}({', '.join(f'{k}={v!r}' for k, v in c['arguments'].items())})")
    elif m["role"] == "tool":
        print(f"  tool returns {m['content']!r}")
    else:
        print(f"  assistant: {m['content']}")
print(f"(answer {tasks[shown]['answer']}: {'right' if first['rows'][shown]['correct'] else 'wrong'})")

# %% [markdown]
# ## Agentic RL
# SFT taught the format on the questions' own wordings. The agent RL prompts (`tool_rl.jsonl`) ask for the
# training facts, and new sums, in **other words** ("Tell me Mavi's house number.") that tool SFT never used;
# the held-out prompts (`tool_rl_val.jsonl`) ask the held-out facts in those words. The `agent` stage
# (`minimind/align/agent.py`, MiniMind's `train_agent.py`) samples `group_size` episodes per prompt, rewards
# each with 1 when its final answer is right (`RuleReward`) plus a small format reward for every well-formed
# call (minus one for a broken call), and normalises the rewards within each group, as GRPO does. The loss
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
                    seed=seed, seq_len=512, device=device, progress=False)
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
