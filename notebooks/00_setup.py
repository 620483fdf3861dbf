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
# # 00 · Setup and a tour
#
# This course trains **MiniMind**, a small language model, from random weights: tokenizer, pretraining,
# supervised fine-tuning, LoRA, DPO, reinforcement learning and distillation, and then tool calls, taught by
# SFT and by reinforcement learning over whole tool episodes, in the chat format of minimind-3, MiniMind's
# current generation. Every chapter is a notebook
# that calls the same tested package, `minimind`, so the cells stay short and what you read is what runs.
#
# The course has one dial, the **preset**. On a laptop CPU you run the `tiny` preset on the generated
# course corpus, a few minutes per chapter. On a GPU the same notebooks run MiniMind2's real presets on
# MiniMind's datasets, in batch:
#
# ```bash
# papermill notebooks/07_pretrain.ipynb out.ipynb -p preset minimind2-small -p data minimind
# ```
#
# The cell below holds the parameters that papermill overrides.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's published datasets)
device = "auto"        # auto | cpu | cuda | mps
out_dir = None         # where this run writes; None means runs/<preset>

# %% [markdown]
# ## The environment
# What this machine offers. `auto` picks a CUDA GPU if there is one, then Apple's MPS, then the CPU.
# "bf16 hardware" names the CPU feature that multiplies bfloat16 matrices natively (AMX, AVX512-BF16, Arm's
# BF16), if there is one: chapter 07 explains when training uses it.

# %%
import time

import torch

import minimind
from minimind import MiniMindConfig, MiniMindForCausalLM, PRESETS
from minimind.course import record, runs_dir
from minimind.train.runtime import environment, pick_device
from minimind.use.bench_flops import PRETRAIN_HQ_TOKENS

run_dir = runs_dir(preset, out_dir)
dev = pick_device(device)
for key, value in environment().items():
    print(f"{key:18s} {value}")
print(f"{'minimind':18s} {minimind.__version__}")

# %% [markdown]
# ## The presets
# Six model sizes share one implementation: the course's `tiny`, MiniMind2's three and the two of
# minimind-3, MiniMind's 2026 generation (q/k-norm, as Qwen3; chapter 05 compares them). Their parameter
# counts are computed here, from the code, and match MiniMind's published sizes: 25.8M, 104.0M and
# 145.0M for MiniMind2, 63.9M and 198.4M for minimind-3. (Building on the `meta` device allocates no
# memory, so even the large presets count instantly.)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'preset':16s} {'params':>9s} {'hidden':>6s} {'layers':>6s} {'heads':>5s} {'kv':>3s} {'ffn':>5s}")
counts = {}
for name in PRESETS:
    cfg = MiniMindConfig.from_preset(name)
    with torch.device("meta"):
        counts[name] = MiniMindForCausalLM(cfg).num_parameters()
    print(f"{name:16s} {counts[name] / 1e6:8.1f}M {cfg.hidden_size:6d} {cfg.num_hidden_layers:6d} "
          f"{cfg.num_attention_heads:5d} {cfg.num_key_value_heads:3d} {cfg.intermediate_size:5d}"
          + (f"  MoE {cfg.n_shared_experts}+{cfg.n_routed_experts}, top-{cfg.num_experts_per_tok}"
             if cfg.use_moe else "") + ("  q/k-norm" if cfg.qk_norm else ""))

# %% [markdown]
# ## What a chapter costs here
# A training step is a forward pass, a backward pass and an optimizer update. Timing a few steps of the
# chosen preset tells how many tokens per second this machine trains, and so what a chapter costs.
# Training compute is about 6 FLOPs per parameter per token (2 for the forward pass, 4 for the
# backward), which turns a token budget into a time estimate.

# %%
cfg = MiniMindConfig.from_preset(preset)
model = MiniMindForCausalLM(cfg).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
batch, seq = (8, 256) if dev.type == "cpu" else (32, 512)
x = torch.randint(0, cfg.vocab_size, (batch, seq), device=dev)
times = []
for step in range(4):
    start = time.perf_counter()
    loss = model(x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
step_time = sorted(times[1:])[len(times[1:]) // 2]  # median, the first step warms up
tokens_per_s = batch * seq / step_time
flops_per_token = 6 * model.num_parameters()
print(f"{preset} on {dev}: {tokens_per_s:,.0f} tokens/s training, "
      f"{tokens_per_s * flops_per_token / 1e9:.1f} GFLOP/s achieved")
for budget in (1e6, 1e7, 1e8):
    print(f"  {budget:>12,.0f} tokens would take {budget / tokens_per_s / 60:8.1f} min")

# %% [markdown]
# MiniMind2-small's pretraining is one epoch of MiniMind's `pretrain_hq.jsonl` (1.6 GB of text): its own
# training log shows 44,160 steps of 32 samples, each padded or cut to 512 positions. At the rate measured
# above, in FLOP/s, this machine would need:

# %%
small = MiniMindConfig.from_preset("minimind2-small")
with torch.device("meta"):
    small_params = MiniMindForCausalLM(small).num_parameters()
achieved = tokens_per_s * flops_per_token  # FLOP/s this machine reached above
days = PRETRAIN_HQ_TOKENS * 6 * small_params / achieved / 86400
print(f"pretrain_hq, one epoch: {PRETRAIN_HQ_TOKENS:.3g} token positions x 6 x {small_params / 1e6:.1f}M parameters "
      f"= {PRETRAIN_HQ_TOKENS * 6 * small_params:.2g} FLOPs: {days:,.0f} days at {achieved / 1e9:.0f} GFLOP/s")

# %% [markdown]
# That is why the real presets belong on a GPU, and why the CPU course trains the `tiny` model on a small
# generated corpus. One more thing about `tiny`'s count in the table above: every preset counts MiniMind's
# 6,400-token vocabulary, and the embedding (shared with the output head) is a large part of a small model:

# %%
tiny = MiniMindConfig.from_preset("tiny")
embedding = tiny.vocab_size * tiny.hidden_size
print(f"tiny: {counts['tiny'] / 1e6:.2f}M parameters, of which the embedding is {tiny.vocab_size:,} x "
      f"{tiny.hidden_size} = {embedding / 1e6:.2f}M ({embedding / counts['tiny']:.0%})")

# %% [markdown]
# The course's own tokenizer (chapter 01 trains it and prints its size) stops at a smaller vocabulary than
# MiniMind's, since the small generated corpus has few distinct words. The tiny model the course trains is
# smaller by one embedding row of `hidden_size` numbers for each token its vocabulary lacks.
#
# ## The chapters
#
# | nb | topic | builds |
# | --- | --- | --- |
# | 01 | tokenizer | a byte-level BPE tokenizer |
# | 02 | data | the course corpus and loaders for every stage |
# | 03 | attention | causal, multi-head and grouped-query attention, the KV cache |
# | 04 | RoPE and YaRN | rotary positions and longer contexts |
# | 05 | the model | MiniMind, equal to transformers' Llama |
# | 06 | mixture of experts | router, experts, load balancing |
# | 07 | pretraining | a base model |
# | 08 | SFT | a chat model |
# | 09 | LoRA | an adapter with a new skill |
# | 10 | DPO | a preference-aligned model |
# | 11 | RL: PPO, GRPO, SPO | a model trained on verifiable rewards |
# | 12 | distillation | a student taught by a teacher |
# | 13 | evaluate and serve | numbers, a chat, an API |
# | 14 | tool calls and agentic RL | a model that calls tools (minimind-3's chat format) |

# %%
record(run_dir, "00_setup", device=str(dev), train_tokens_per_s=round(tokens_per_s),
       params=counts[preset] if preset in counts else model.num_parameters())
