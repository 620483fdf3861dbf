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
# # 09 · LoRA: a new skill on a frozen model
#
# Fine-tuning every weight of a model for every new skill is expensive: a full copy of the optimizer
# state and of the weights per skill. LoRA (Hu et al., 2021) freezes the model and learns, beside each
# chosen weight matrix $W$, a low-rank update:
#
# $$ W x \quad\longrightarrow\quad W x + \frac{\alpha}{r} B A x, \qquad A \in \mathbb{R}^{r \times d_{in}},\; B \in \mathbb{R}^{d_{out} \times r} $$
#
# $B$ starts at zero, so training starts exactly at the base model. With a small rank $r$ only a few
# percent of the parameters train, the adapter is a small file, and it can be merged into $W$ afterwards
# at no cost at inference. Here the SFT model of chapter 08 learns a new identity ("I am MiniMind") and a
# domain it never saw: caring for the animals of the course world.
#
# Your numbers will differ a little from the ones printed here: every CPU rounds differently, and training
# carries the difference forward, so losses and accuracies move with the machine (and with `seed`). What
# the chapter teaches should not: the robustness page (book/robustness.md) checks each lesson across seeds
# and two sets of CPU kernels, and says where one does not hold.

# %% tags=["parameters"]
preset = "tiny"
data = "course"        # course | minimind (lora_identity.jsonl)
device = "auto"
dtype = "auto"         # auto: bf16 autocast on a GPU or a CPU with bf16 hardware, else float32
out_dir = None
max_steps = 240
rank = 8
alpha = 16.0
lr = 2e-3
replay = 1.0           # SFT dialogues mixed in per new dialogue (0: the new data alone)
seed = 0               # the training seed (`minimind course --seed`: do the lessons hold for other seeds?)

# %%
import json
import random

import matplotlib.pyplot as plt
import torch

from minimind import MiniMindForCausalLM
from minimind.course import data_paths, ensure_stage, record, runs_dir
from minimind.course.plots import plot_metrics
from minimind.data import read_jsonl
from minimind.model import load_checkpoint
from minimind.model.generation import generate_replies
from minimind.model.lora import apply_lora, merge_lora
from minimind.train import load_tokenizer, train_stage
from minimind.use.eval import answer_matches, exact_match_accuracy

run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
tokenizer = load_tokenizer(paths["tokenizer"])
sft_dir = ensure_stage("sft", run_dir, paths, preset, device, dtype=dtype, seed=seed)

# %% [markdown]
# ## How many parameters train?
# Wrapping the attention and MLP projections of the model with rank-8 adapters:

# %%
# NBVAL_CHECK_OUTPUT
probe = MiniMindForCausalLM.from_pretrained(sft_dir)
total = probe.num_parameters()
wrapped = apply_lora(probe, rank=rank, alpha=alpha)
trainable = probe.num_parameters(trainable_only=True)
print(f"{len(wrapped)} layers wrapped, e.g. {wrapped[0]}")
print(f"trainable: {trainable:,} of {total + trainable:,} parameters ({trainable / (total + trainable):.1%})")

# %% [markdown]
# ## The new data
# We keep a tenth of the LoRA dialogues aside to check that the model generalises within the new skill,
# rather than reciting its training answers.
#
# A model trained only on new data drifts away from what it could do before ("catastrophic
# forgetting"), adapters or not: the adapters are free to change every projection's output. The usual
# remedy is *replay*: mix some of the old training data in. Here `replay` SFT dialogues are added per new
# dialogue; after the main run, the same run without replay shows what it protects.

# %%
records = read_jsonl(paths["lora"], "sft")
random.Random(0).shuffle(records)
held = records[: len(records) // 10]
old = read_jsonl(paths["sft"], "sft")
random.Random(1).shuffle(old)
mixed = records[len(held):] + old[: int(replay * (len(records) - len(held)))]
random.Random(2).shuffle(mixed)
lora_dir = run_dir / "lora_data"
lora_dir.mkdir(exist_ok=True)
with open(lora_dir / "train.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in mixed)
questions = [{"question": r["conversations"][-2]["content"], "answer": r["conversations"][-1]["content"]} for r in held]
print(f"{len(records) - len(held)} new dialogues + {len(mixed) - len(records) + len(held)} replayed SFT dialogues; "
      f"{len(held)} new ones held out; e.g.")
print(f"  {questions[0]['question']!r} -> {questions[0]['answer']!r}")

# %% [markdown]
# A reply counts as right when it shares most of its words with the reference answer (the new skill's
# answers are sentences, not single facts). Before training, the SFT model does not know it is MiniMind:

# %%
def skill_score(model, qs):
    replies = generate_replies(model, tokenizer, [[{"role": "user", "content": q["question"]}] for q in qs], 32)
    overlap = [len(set(r.lower().split()) & set(q["answer"].lower().split())) / len(set(q["answer"].lower().split()))
               for r, q in zip(replies, qs)]
    return sum(o >= 0.6 for o in overlap) / len(qs), replies


sft_model, _ = load_checkpoint(sft_dir)
before, before_replies = skill_score(sft_model, questions)
facts_before = exact_match_accuracy(sft_model, tokenizer, paths["eval"], max_new_tokens=24)["by_split"] if data == "course" else {}
print(f"new skill before LoRA: {before:.0%}")
for q, r in list(zip(questions, before_replies))[:3]:
    print(f"  Q: {q['question']}\n  A: {r!r}")

# %% [markdown]
# ## Train the adapters
# The same loop once more: the `lora` stage wraps the model, freezes the base, and saves the adapters
# alone (`adapter.safetensors`), with the path of the base they belong to.

# %%
summary = train_stage("lora", run_dir / "lora", data=lora_dir / "train.jsonl", tokenizer=tokenizer, init=sft_dir,
                      max_steps=max_steps, lr=lr, device=device, dtype=dtype, stage_kwargs=dict(lora_rank=rank, lora_alpha=alpha),
                      seed=seed)
plot_metrics({"lora": run_dir / "lora"}, keys=("loss",), title="LoRA: loss on the new dialogues")
plt.show()
sizes = {p.name: p.stat().st_size for p in (run_dir / "lora").glob("*.safetensors")}
print(f"adapter file {sizes['adapter.safetensors'] / 1e3:.0f} kB vs full model "
      f"{(sft_dir / 'model.safetensors').stat().st_size / 1e3:.0f} kB")

# %% [markdown]
# ## After: the new skill, and the old ones kept
# `load_checkpoint` on a LoRA run loads its base, applies the adapters and merges them.

# %%
lora_model, _ = load_checkpoint(run_dir / "lora")
after, after_replies = skill_score(lora_model, questions)
facts_after = exact_match_accuracy(lora_model, tokenizer, paths["eval"], max_new_tokens=24)["by_split"] if data == "course" else {}
print(f"new skill: {before:.0%} -> {after:.0%}")
for split in facts_before:
    print(f"course questions ({split}): {facts_before[split]:.0%} -> {facts_after[split]:.0%}")
for q, r in list(zip(questions, after_replies))[:4]:
    print(f"  Q: {q['question']}\n  A: {r!r}")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
labels = ["new skill"] + [f"facts: {s}" for s in facts_before]
x = range(len(labels))
ax.bar([i - 0.2 for i in x], [before] + list(facts_before.values()), 0.4, label="SFT model", color="grey")
ax.bar([i + 0.2 for i in x], [after] + list(facts_after.values()), 0.4, label="SFT + LoRA", color="C2")
ax.set_xticks(list(x), labels, fontsize=8)
ax.set_ylim(0, 1)
ax.legend(fontsize=8)
ax.set_title("LoRA adds a skill and keeps the old ones")
plt.show()

# %% [markdown]
# ### Without replay
# The same run on the new dialogues alone (`replay = 0`), same seed and steps, scored the same way:

# %%
# NBVAL_CHECK_OUTPUT
if replay and data == "course":
    alone = records[len(held):]
    with open(lora_dir / "train_no_replay.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in alone)
    train_stage("lora", run_dir / "lora_no_replay", data=lora_dir / "train_no_replay.jsonl", tokenizer=tokenizer,
                init=sft_dir, max_steps=max_steps, lr=lr, device=device, dtype=dtype,
                stage_kwargs=dict(lora_rank=rank, lora_alpha=alpha), seed=seed, progress=False)
    no_replay, _ = load_checkpoint(run_dir / "lora_no_replay")
    skill_alone = skill_score(no_replay, questions)[0]
    facts_alone = exact_match_accuracy(no_replay, tokenizer, paths["eval"], max_new_tokens=24)["by_split"]
    print(f"{'':22} {'SFT model':>10} {'replay ' + format(replay, 'g'):>10} {'replay 0':>10}")
    print(f"{'new skill':22} {before:10.0%} {after:10.0%} {skill_alone:10.0%}")
    for split in facts_before:
        print(f"{'course facts: ' + split:22} {facts_before[split]:10.0%} {facts_after[split]:10.0%} "
              f"{facts_alone[split]:10.0%}")

# %% [markdown]
# On the new dialogues alone the adapters learn the skill about as well, every step going to it, and the old
# answers fade: facts the SFT model knew fall far. The adapters protect nothing by themselves, since they can
# change every projection's output; what keeps the old answers is the old data in the mix.

# %% [markdown]
# ## Where we differ from MiniMind
# MiniMind's `model_lora.py` wraps only the `nn.Linear` layers whose weight is square, and adds $BA\,x$
# unscaled (rank 8 for its identity data); we wrap all seven projections of every block and scale by
# $\alpha / r$, as the LoRA paper and PEFT do. Which of this model's projections are square:

# %%
# NBVAL_CHECK_OUTPUT
block = MiniMindForCausalLM.from_pretrained(sft_dir).model.layers[0]
shapes = {n: tuple(m.weight.shape) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
print("square (MiniMind wraps):", [n for n, s in shapes.items() if s[0] == s[1]])
print("not square (only we wrap):", [f"{n} {s[1]}->{s[0]}" for n, s in shapes.items() if s[0] != s[1]])

# %% [markdown]
# With grouped-query attention the key and value projections are narrower than the hidden size, and the MLP's
# are wider, so MiniMind's rule adapts only the query and output projections: a small adapter, which suits its
# identity dialogues. We wrap the MLP too because a new skill here means new facts about animals, and the MLP
# layers are where a transformer keeps much of what it knows (Geva et al. 2021, "Transformer Feed-Forward
# Layers Are Key-Value Memories"). The $\alpha / r$ scale is the LoRA paper's (Hu et al. 2021): it spares
# retuning `lr` each time `rank` changes.

# %% [markdown]
# ## Merging is exact
# After merging, $W' = W + \frac{\alpha}{r} BA$ is an ordinary weight: the merged model is a plain MiniMind
# that computes the same function as the base plus adapters, with no extra cost per token.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
demo = MiniMindForCausalLM.from_pretrained(sft_dir).eval()
apply_lora(demo, rank=4, alpha=8)
for name, p in demo.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(p, std=0.02)  # as if trained
x = torch.randint(3, tokenizer.vocab_size, (2, 16))
with torch.no_grad():
    unmerged = demo(x).logits
    merged = merge_lora(demo)(x).logits
print("merged == base + adapters:", torch.allclose(merged, unmerged, atol=1e-5))
print("LoRA modules left after merge:", sum("lora" in n for n, _ in demo.named_parameters()))

# %%
record(run_dir, "09_lora", trainable_fraction=round(trainable / (total + trainable), 4), skill_before=round(before, 3),
       skill_after=round(after, 3), **{f"facts_{k}_before": round(v, 3) for k, v in facts_before.items()},
       **{f"facts_{k}_after": round(v, 3) for k, v in facts_after.items()},
       **({"skill_no_replay": round(skill_alone, 3), **{f"facts_{k}_no_replay": round(v, 3) for k, v in facts_alone.items()}}
          if replay and data == "course" else {}), steps=summary["steps"],
       train_seconds=round(summary["wall_time"], 1))

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. Merge (implement).** After training, an adapter can be folded into its layer so that inference costs
# nothing extra. Write `merge(W, A, B, alpha, r)` for the frozen weight W (out, in), A (r, in) and B (out, r).
# The check also runs the merged layer against the adapted one.

# %%
def merge(W, A, B, alpha, r):
    ...  # your code: (out, in)


check("09.lora_merge", merge)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def merge(W, A, B, alpha, r):
    return W + (alpha / r) * (B @ A)


assert check("09.lora_merge", merge)

# %% [markdown]
# **2. What it trains (count).** How many parameters do rank-8 adapters on all seven projections of the tiny
# preset train? Count them from the shapes, then compare with the whole model's parameters.

# %%
adapter_parameters = None  # your count
check("09.lora_parameters", adapter_parameters)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: r * (in + out) per adapted Linear
from minimind import MiniMindConfig

c = MiniMindConfig.from_preset("tiny")
h, i, q, kv = c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]  # q, k, v, o, gate, up, down
adapter_parameters = c.num_hidden_layers * sum(8 * (a + b) for a, b in shapes)
print(f"{adapter_parameters:,} adapter parameters")
assert check("09.lora_parameters", adapter_parameters)
