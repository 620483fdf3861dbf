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
# # 07 · Pretraining
#
# Pretraining is next-token prediction on plain text, and nothing else: the model reads a window of
# tokens and, at every position, is scored on how much probability it gave the token that really came
# next. Everything the model will later "know" about the course world it has to pick up here, from
# stories and descriptions, because SFT (chapter 08) only teaches it to answer questions.
#
# This chapter trains the base model `runs/<preset>/pretrain` that the later chapters start from.
#
# Your numbers will differ a little from the ones printed here: every CPU rounds differently, and training
# carries the difference forward, so losses and accuracies move with the machine (and with `seed`). What
# the chapter teaches should not: the robustness page (book/robustness.md) checks each lesson across seeds
# and two sets of CPU kernels, and says where one does not hold.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's pretrain_hq.jsonl)
device = "auto"
dtype = "auto"         # auto: bf16 autocast on a GPU or a CPU with bf16 hardware, else float32
out_dir = None
max_steps = 300        # None: one epoch over the data (the real presets)
batch_size = 16
seq_len = 256
lr = 2e-3
seed = 0               # the training seed (`minimind course --seed`: do the lessons hold for other seeds?)

# %%
import numpy as np
import matplotlib.pyplot as plt
import torch

from minimind import MiniMindForCausalLM
from minimind.course import data_paths, record, runs_dir, sample_callback
from minimind.course.plots import plot_metrics
from minimind.data import PretrainDataset, token_file_for, tokenize_pretrain
from minimind.train import TrainArgs, build_model, load_tokenizer, lr_at, read_metrics, train_stage
from minimind.train.runtime import pick_device

run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
tokenizer = load_tokenizer(paths["tokenizer"])

# %% [markdown]
# ## Packed windows
# The text is tokenized once into one flat stream of token ids, each document wrapped in `<|im_start|>`
# and `<|im_end|>` (ids 1 and 2, as MiniMind does), so the model learns where a text begins and ends.
# Training samples are fixed-length windows cut from that stream: no padding, every position of every
# window is a real training target.

# %%
bin_path = token_file_for(paths["pretrain"], tokenizer)
if not bin_path.exists():
    tokenize_pretrain(paths["pretrain"], tokenizer, bin_path)
windows = PretrainDataset(bin_path, seq_len)
stream = np.memmap(bin_path, dtype=np.uint16, mode="r")
print(f"{len(stream):,} tokens -> {len(windows):,} windows of {seq_len}")
print(repr(tokenizer.decode(windows[0]["input_ids"][:60])))

# %% [markdown]
# ## The loss to beat
# A model that ignores context can do no better than the unigram distribution: always predict each
# token with its overall frequency. Its loss is the entropy of that distribution. Anything below it is
# the model using context.

# %%
counts = np.bincount(stream, minlength=tokenizer.vocab_size).astype(np.float64)
p = counts[counts > 0] / counts.sum()
unigram_loss = float(-(p * np.log(p)).sum())
print(f"uniform guess  ln(vocab) = {np.log(tokenizer.vocab_size):.2f} nats")
print(f"unigram baseline         = {unigram_loss:.2f} nats")

# %% [markdown]
# ## One training step, written out
# Here is all of training, for a few steps. A batch is `batch_size` windows in a shuffled order. The
# forward pass returns the loss (the model shifts the labels by one: position t is scored on token t+1);
# the backward pass fills every weight's `.grad`; the gradients are clipped to a total norm of 1 (one
# unlucky batch cannot throw the weights far); AdamW takes a step at the learning rate that the schedule
# gives for this step (a linear warmup, then a cosine decay); and the gradients are cleared for the next
# batch. Weight decay applies to the matrices only, not to the norms' 1-D gains.

# %%
demo_steps, demo_batch = 8, 4
args = TrainArgs(max_steps=demo_steps, batch_size=demo_batch, lr=lr, warmup_steps=2, device="cpu")
torch.manual_seed(args.seed)
model = build_model(preset, tokenizer)                     # fresh random weights of the preset
matrices = [p for p in model.parameters() if p.dim() >= 2]
gains = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": args.weight_decay},
                               {"params": gains, "weight_decay": 0.0}], betas=args.betas, fused=True)
order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(args.seed))
by_hand = []
for step in range(demo_steps):
    rows = order[step * demo_batch:(step + 1) * demo_batch]
    batch = torch.stack([windows[int(i)]["input_ids"] for i in rows])  # (B, T) token ids
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, demo_steps, args)        # warmup, then cosine decay
    loss = model(batch, labels=batch).loss                 # forward: next-token cross-entropy
    loss.backward()                                        # backward: a .grad on every weight
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()                                       # AdamW update
    optimizer.zero_grad(set_to_none=True)
    by_hand.append(loss.item())
    print(f"step {step + 1}: loss {loss.item():.4f}  lr {optimizer.param_groups[0]['lr']:.2e}")

# %% [markdown]
# The package's loop does exactly this, and adds what a long run needs around it: gradient accumulation,
# mixed precision, `torch.compile`, several processes, logging, evaluation, checkpoints and resumption.
# Given the same seed it builds the same model, shuffles the same way and takes the same steps, so the
# two agree on every step (both in float32 here: the comparison is exact):

# %%
# NBVAL_CHECK_OUTPUT
loop = train_stage("pretrain", run_dir / "step_demo", data=paths["pretrain"], tokenizer=tokenizer, preset=preset,
                   seq_len=seq_len, device="cpu", dtype="float32", progress=False, log_every=1, max_steps=demo_steps,
                   batch_size=demo_batch, lr=lr, warmup_steps=2)
by_loop = [m["loss"] for m in read_metrics(run_dir / "step_demo")]
print("the loop's losses equal the hand-written step's:", np.allclose(by_hand, by_loop, rtol=1e-5, atol=1e-6))
del model, optimizer, loop

# %% [markdown]
# ## Train
# The loop (`minimind.train.train`) is the one every later stage uses. Every `eval_every` steps it
# measures the loss on held-out text and lets a callback write a few samples, so we can watch the model
# learn.
#
# **Precision.** With `dtype="auto"` the loop multiplies matrices in bfloat16 under `torch.autocast` where
# that pays: on GPUs with bf16, and on CPUs with bf16 hardware (AMX, AVX512-BF16, Arm's BF16) for models
# at least 512 wide, whose steps are mostly matrix products. The weights, the optimizer state and the loss
# stay float32. The tiny preset stays float32 on every CPU: its matrices are too small for bf16 to win, and
# the course's numbers come out the same on every laptop. The loop prints its choice and `summary["precision"]`
# records it; `dtype="bfloat16"` or `"float32"` forces one. book/performance.md measures both: the speed of
# each precision per preset, and the whole course run both ways.

# %%
prompts = ["Rusar lives in", "If you add 4 and 9, you get", "One autumn afternoon,"]
eval_every = max(1, (max_steps or 1000) // 4)
summary = train_stage("pretrain", run_dir / "pretrain", data=paths["pretrain"], val_data=paths["pretrain_val"],
                      tokenizer=tokenizer, preset=preset, max_steps=max_steps, batch_size=batch_size,
                      seq_len=seq_len, lr=lr, device=device, dtype=dtype, eval_every=eval_every, eval_batches=10, seed=seed,
                      callbacks=[sample_callback(tokenizer, prompts, max_new_tokens=16)])
metrics = read_metrics(run_dir / "pretrain")
val_loss = [m["val_loss"] for m in metrics if "val_loss" in m][-1]
print(f"{summary['steps']} steps, {summary['tokens']:,} tokens, {summary['wall_time']:.0f} s in "
      f"{summary['precision']}; validation loss {val_loss:.2f} (unigram {unigram_loss:.2f})")

# %%
ax = plot_metrics({"pretrain": run_dir / "pretrain"}, baseline={"unigram": unigram_loss},
                  title=f"pretraining, preset {preset}")
plt.show()

# %% [markdown]
# ## What the model writes as it learns
# The same prompts, greedy decoding, at each evaluation point. Early on the model repeats frequent
# tokens; then it finds words, then grammar, then the facts of the world.

# %%
for m in metrics:
    if "samples" in m:
        print(f"step {m['step']}:")
        for prompt, text in zip(prompts, m["samples"]):
            print(f"   {prompt!r} -> {text!r}")

# %% [markdown]
# ## Throughput
# Tokens per second is the number to watch when making training faster (chapter 00 estimated it
# before we had data). Each logged point averages the steps since the last one.

# %%
tps = [m["tokens_per_s"] for m in metrics]
print(f"median {np.median(tps):,.0f} tokens/s on {pick_device(device)}; "
      f"a step is {batch_size} x {seq_len} = {batch_size * seq_len:,} tokens")

# %% [markdown]
# ## The loss without the logits
# The output head turns every position into one score per vocabulary entry, so the logits of a batch are
# a tokens x vocabulary tensor, and plain cross-entropy keeps a second one (its log-softmax) for the
# backward pass. For a small model that is the largest thing a step writes. `minimind.model.loss` computes the
# same loss a few hundred tokens at a time instead: each chunk's logits, softmax and gradient while the
# chunk is still in the cache, multiplied straight into the gradients of the hidden states and of the
# head. The model does this whenever it is given `labels`; `minimind.model.fast.plain("loss")` switches back to
# the formula, which gives the same loss, so the two can be timed side by side. What it saves depends on
# how large the logits are next to everything else a step computes: with the course tokenizer's small
# vocabulary they are a small part, so expect little here; with MiniMind's 6,400-entry vocabulary and the
# tiny preset they are the largest tensor of the step, and in SFT, where the prompt's positions are
# skipped altogether, the saving grows further (`book/performance.md` measures it).

# %%
import contextlib
import time

from minimind.model import fast

model = MiniMindForCausalLM.from_pretrained(run_dir / "pretrain", device=pick_device(device)).train()
batch = torch.stack([windows[i]["input_ids"] for i in range(batch_size)]).to(model.device)
print(f"logits of one batch: {batch.numel():,} positions x {model.config.vocab_size:,} entries = "
      f"{batch.numel() * model.config.vocab_size * 4 / 2 ** 20:.0f} MB in float32")


def train_step(plain):
    with fast.plain("loss") if plain else contextlib.nullcontext():
        start = time.perf_counter()
        loss = model(batch, labels=batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item(), time.perf_counter() - start


runs = {True: [], False: []}  # plain formula: True; chunked: False
for rep in range(4):          # interleaved; the first round is a warm-up
    for plain in (True, False):
        loss, seconds = train_step(plain)
        if rep:
            runs[plain].append((loss, seconds))
print(f"loss from the full logits {runs[True][0][0]:.4f}, chunked from the hidden states {runs[False][0][0]:.4f}")
ms = {p: 1000 * float(np.median([sec for _, sec in r])) for p, r in runs.items()}
print(f"forward + backward: {ms[True]:.0f} ms with the full logits, {ms[False]:.0f} ms chunked "
      f"({ms[True] / ms[False]:.2f}x)")
del model

# %% [markdown]
# ## Stop and resume
# Long runs get interrupted. The checkpoint holds the model, the optimizer's moments, the schedule's
# position, the random states and the data position, so a resumed run continues *exactly*: here a run
# stopped after 6 steps and resumed gives bit-for-bit the weights of a run that never stopped.

# %%
# NBVAL_CHECK_OUTPUT
demo = dict(data=paths["pretrain"], tokenizer=tokenizer, preset="tiny", max_steps=12, batch_size=4, seq_len=64,
            device="cpu", progress=False, log_every=1)
straight = train_stage("pretrain", run_dir / "resume_demo/straight", **demo)["model"]
train_stage("pretrain", run_dir / "resume_demo/stopped", stop_at=6, **demo)
resumed = train_stage("pretrain", run_dir / "resume_demo/stopped", resume=True, **demo)["model"]
same = all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
print("resumed == uninterrupted:", same)

# %%
record(run_dir, "07_pretrain", val_loss=round(val_loss, 4), unigram_loss=round(unigram_loss, 4),
       steps=summary["steps"], tokens=summary["tokens"], tokens_per_s=round(float(np.median(tps))),
       train_seconds=round(summary["wall_time"], 1), precision=summary["precision"], resume_exact=same)

# %% [markdown]
# ## Where we differ from MiniMind
# MiniMind's `trainer/train_pretrain.py` (read at its minimind-3 commit d65ef2c) gives each document a row of
# its own, between `<|im_start|>` and `<|im_end|>`, cut or padded to 340 tokens, and masks the padding out of
# the loss. We pack the token stream into windows instead, as described above: no step is spent
# on padding, and a document may run on into the next window. Its optimizer is `AdamW` with PyTorch's defaults
# (betas 0.9 and 0.999, weight decay 0.01 on every parameter), and its learning rate falls along a cosine from
# `lr` to a tenth of it with no warm-up, recomputed at every micro-batch. Ours has betas 0.9 and 0.95 and weight
# decay 0.1 on the weight matrices only (nanoGPT's and Llama's settings), a short linear warm-up, and a
# schedule over optimizer steps, so that `--grad-accum` leaves the curve as it is. MiniMind trains its 64M
# model at 5e-4 for two epochs of its data; the tiny model here trains at `lr` (2e-3) for `max_steps` steps.

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. The loss (implement).** Write `next_token_loss(logits, ids)` for logits (B, T, V) and the input ids
# (B, T): the mean cross-entropy of every position's prediction of the *next* token. The check tells you if a
# position is scored on its own token instead.

# %%
def next_token_loss(logits, ids):
    ...  # your code: a scalar tensor


check("07.next_token_loss", next_token_loss)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def next_token_loss(logits, ids):
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))


assert check("07.next_token_loss", next_token_loss)

# %% [markdown]
# **2. The schedule (implement).** Write `lr_at(step, total, lr, warmup, min_ratio)`: a linear warm-up over
# `warmup` steps, then a cosine from `lr` down to `lr * min_ratio` at step `total` (and flat after it). The
# check compares every step with the loop's own `lr_at`; plot yours to see the curve the training log shows.

# %%
def lr_at(step, total, lr, warmup, min_ratio):
    ...  # your code: a float


check("07.lr_schedule", lr_at)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
import math


def lr_at(step, total, lr, warmup, min_ratio):
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * progress))


assert check("07.lr_schedule", lr_at)

# %% [markdown]
# **3. Accumulation (predict).** A step over 16 windows, or two micro-batches of 8 whose losses are each
# divided by 2 before `backward()` (`--grad-accum 2`): is the gradient the same? Answer "yes" or "no"; the
# check computes both. (It holds here because every packed window has the same number of tokens; think about
# what changes for chat rows with different numbers of learned tokens.)

# %%
same_gradient = None  # "yes" or "no"
check("07.grad_accum", same_gradient)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: the mean over 16 equals the mean of two means over 8, and backward() adds the gradients up
same_gradient = "yes"
assert check("07.grad_accum", same_gradient)
