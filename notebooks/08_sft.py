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
# # 08 · Supervised fine-tuning (SFT)
#
# The pretrained model continues text. A chat model answers. SFT teaches the difference with the same
# next-token loss, on dialogues rendered with the chat template, and scored **only on the assistant's
# tokens**: the model learns to write answers, not to imitate users.
#
# The course corpus is built for one lesson here. Its facts are split: the SFT dialogues ask about one
# part of them; the other part appears *only* in the pretraining text. If the SFT model answers questions
# about those held-out facts, it learned them in pretraining, and SFT taught it to *use* what it knows.
#
# Your numbers will differ a little from the ones printed here: every CPU rounds differently, and training
# carries the difference forward, so losses and accuracies move with the machine (and with `seed`). What
# the chapter teaches should not: the robustness page (book/robustness.md) checks each lesson across seeds
# and two sets of CPU kernels, and says where one does not hold.

# %% tags=["parameters"]
preset = "tiny"
data = "course"        # course | minimind (sft_mini_512.jsonl)
device = "auto"
dtype = "auto"         # auto: bf16 autocast on a GPU or a CPU with bf16 hardware, else float32
out_dir = None
max_steps = 250        # None: one epoch
batch_size = 16
lr = 1e-3
seed = 0               # the training seed (`minimind course --seed`: do the lessons hold for other seeds?)

# %%
import matplotlib.pyplot as plt
import torch

from minimind import MiniMindForCausalLM
from minimind.course import data_paths, ensure_stage, record, runs_dir
from minimind.course.plots import plot_metrics
from minimind.data import SFTDataset, chat_labels, read_jsonl
from minimind.train import load_tokenizer, train_stage
from minimind.use.eval import answer_matches, exact_match_accuracy

run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
tokenizer = load_tokenizer(paths["tokenizer"])
pretrained = ensure_stage("pretrain", run_dir, paths, preset, device, dtype=dtype, seed=seed)  # chapter 07's model, or built now

# %% [markdown]
# ## A dialogue as the model sees it
# The chat template wraps each turn in `<|im_start|>role ... <|im_end|>`. The labels keep the ids the
# assistant writes, from just after `<|im_start|>assistant\n` through its `<|im_end|>` (so the model
# also learns to stop), and `-100` (ignored) everywhere else. Below, the trained tokens are in brackets.

# %%
# NBVAL_CHECK_OUTPUT
dialogue = read_jsonl(paths["sft"], "sft", limit=1)[0]["conversations"]
ids, labels = chat_labels(tokenizer, dialogue)
shown = "".join(f"[{tokenizer.decode([i])}]" if lab != -100 else tokenizer.decode([i]) for i, lab in zip(ids, labels))
print(shown)
print(f"{sum(lab != -100 for lab in labels)} of {len(ids)} tokens are trained")

# %%
sft_data = SFTDataset(paths["sft"], tokenizer, max_len=256)
print({k: v for k, v in sft_data.stats.items()})
print(f"{sft_data.stats['target_tokens'] / sft_data.stats['tokens']:.0%} of the tokens carry a loss")

# %% [markdown]
# ## Before: the base model
# Asked a question, the pretrained model has never seen the chat format. We grade answers with
# `minimind.use.eval.answer_matches`: the normalised reply must contain the expected short answer.

# %%
evals = [r for r in read_jsonl(paths["eval"], "auto") if r["type"] == "short"] if data == "course" else []
heldout = [r for r in evals if r["split"] == "heldout"]
seen = [r for r in evals if r["split"] == "seen"]


def accuracy(model, records):
    result = exact_match_accuracy(model, tokenizer, records, max_new_tokens=24)
    return result["accuracy"], [row["output"] for row in result["rows"]]


base = MiniMindForCausalLM.from_pretrained(pretrained).eval()
base_acc, base_replies = accuracy(base, heldout)
print(f"base model: {base_acc:.0%} of {len(heldout)} held-out questions answered")
for r, reply in list(zip(heldout, base_replies))[:3]:
    print(f"  Q: {r['question']}\n  A: {reply!r}  (expected {r['answer']})")

# %% [markdown]
# ## Train
# The same loop as pretraining, started from the pretrained checkpoint; only the data and its labels
# differ. Validation loss is measured on held-out dialogues.

# %%
summary = train_stage("sft", run_dir / "sft", data=paths["sft"], val_data=paths.get("sft_val"), tokenizer=tokenizer,
                      init=pretrained, max_steps=max_steps, batch_size=batch_size, lr=lr, device=device, dtype=dtype,
                      eval_every=max(1, (max_steps or 1000) // 5), eval_batches=10, seed=seed)
plot_metrics({"sft": run_dir / "sft"}, title="SFT: loss on assistant tokens")
plt.show()

# %% [markdown]
# ## After: the chat model
# Questions about facts SFT asked about (*seen*) and about facts that were only ever in the pretraining
# text (*held out*).

# %%
sft = summary["model"].eval()
seen_acc, _ = accuracy(sft, seen)
sft_acc, sft_replies = accuracy(sft, heldout)
print(f"SFT model: seen facts {seen_acc:.0%} ({len(seen)} questions), held-out facts {sft_acc:.0%} "
      f"({len(heldout)} questions); base model on held-out: {base_acc:.0%}")
for r, reply in list(zip(heldout, sft_replies))[:6]:
    print(f"  Q: {r['question']}\n  A: {reply!r}  {'ok' if answer_matches(reply, r['answer']) else 'expected ' + r['answer']}")

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(["base, held-out", "SFT, held-out", "SFT, seen"], [base_acc, sft_acc, seen_acc], color=["grey", "C0", "C1"])
ax.set_ylabel("exact-match accuracy")
ax.set_ylim(0, 1)
ax.set_title("answers before and after SFT")
plt.show()

# %%
record(run_dir, "08_sft", val_loss=round(summary["val_loss"], 4), heldout_exact_match=round(sft_acc, 3),
       base_heldout_exact_match=round(base_acc, 3), seen_exact_match=round(seen_acc, 3), steps=summary["steps"],
       train_seconds=round(summary["wall_time"], 1))

# %% [markdown]
# ## Where we differ from MiniMind
# MiniMind's `trainer/train_full_sft.py` (at its minimind-3 commit d65ef2c) learns from the same tokens as this
# chapter: every assistant turn through its closing `<|im_end|>` (MiniMind also learns the newline after it),
# the loss a mean over those tokens. Its dataset does two things ours does not: it adds a random system prompt
# to a fifth of the conversations, and removes an empty `<think></think>` block from most (80%) of those that
# carry one, so that its model answers with or without either; the course's dialogues have neither. Its
# learning rate is 1e-5, for a 64M model that pretraining on real text has made fluent; the tiny model here
# trains at `lr` (1e-3).

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. The masked loss (implement).** Write `sft_loss(logits, labels)`: the next-token loss of chapter 07,
# where labels of -100 (the prompt, the padding) are not learned from, and the mean runs over the learned
# tokens only.

# %%
def sft_loss(logits, labels):
    ...  # your code: a scalar tensor


check("08.sft_loss", sft_loss)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def sft_loss(logits, labels):
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)


assert check("08.sft_loss", sft_loss)

# %% [markdown]
# **2. Whose mean (predict).** A batch of two conversations: one whose reply has 10 learned tokens at a mean
# loss of 1.0, one with 90 learned tokens at a mean loss of 2.0. What loss does the batch report, as this
# course (and MiniMind) compute it?

# %%
batch_loss = None  # your answer
check("08.mean_over_tokens", batch_loss)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: every learned token counts once, so the long reply weighs nine times the short one
batch_loss = (10 * 1.0 + 90 * 2.0) / (10 + 90)
assert check("08.mean_over_tokens", batch_loss)
