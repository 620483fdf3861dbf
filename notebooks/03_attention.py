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
# # 03 · Attention
#
# Attention is how a token reads the tokens before it. Each token asks a **query**; every earlier token
# offers a **key** (what it is about) and a **value** (what it passes on). The query scores every key,
# the scores become weights through a softmax, and the token receives the weighted sum of the values:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + M\right) V$$
#
# where $d$ is the width of one head and $M$ is the causal mask ($-\infty$ above the diagonal, so no
# token sees the future). This chapter builds that formula one step at a time, checks it against
# MiniMind's `explicit_attention` and PyTorch's fused kernel, then adds what MiniMind actually runs:
# many heads, **grouped-query attention** (GQA) and the **KV cache** that makes generation cheap.
# It ends by looking inside a small trained model: which token each head reads.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's published datasets)
device = "auto"        # auto | cpu | cuda | mps
out_dir = None         # where this run writes; None means runs/<preset>

# %%
import math
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minimind import MiniMindConfig, MiniMindForCausalLM, PRESETS
from minimind.course import record, runs_dir
from minimind.model.attention import Attention, attention_weights, explicit_attention, repeat_kv
from minimind.model.rope import apply_rope, rope_cos_sin, rope_inv_freq
from minimind.train.runtime import pick_device

run_dir = runs_dir(preset, out_dir)
dev = pick_device(device)
if dev.type == "cpu":
    torch.set_num_threads(1)  # this chapter's models are too small to split across cores; one is steadier
cfg = MiniMindConfig.from_preset(preset)
print(f"preset {preset}: hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads of width {cfg.head_dim}, "
      f"{cfg.num_key_value_heads} KV heads, {cfg.num_hidden_layers} layers; device {dev}")

# %% [markdown]
# ## Scaled dot-product attention, step by step
# Five tokens, one head of width 8. In a model, $Q$, $K$ and $V$ are linear projections of the token
# vectors; here they are random numbers, because the arithmetic is the same. Shapes follow PyTorch's
# convention: (batch, heads, tokens, width).

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
T, d = 5, 8
q, k, v = torch.randn(3, 1, 1, T, d).unbind(0)
scores = q @ k.transpose(-2, -1)          # (1, 1, T, T): query i against key j
print("q, k, v:", tuple(q.shape), " scores:", tuple(scores.shape))

# %% [markdown]
# **Why divide by $\sqrt{d}$.** A dot product of two random vectors with unit-variance entries sums $d$
# terms, so its standard deviation grows like $\sqrt{d}$. Wide heads would give huge scores, the softmax
# would put almost all weight on one key, and its gradients would vanish. Dividing by $\sqrt{d}$ keeps
# the scores near unit scale whatever the width, measured here on 10,000 random pairs:

# %%
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(0)
print(f"{'d':>5s} {'std q.k':>9s} {'std q.k/sqrt(d)':>16s} {'top softmax weight (16 keys)':>30s}")
for width in (16, 64, 256, 1024):
    a, b = torch.randn(2, 10_000, width, generator=g)
    raw = (a * b).sum(-1)
    top_raw = raw.view(-1, 16).softmax(-1).max(-1).values.mean()
    top_scaled = (raw / math.sqrt(width)).view(-1, 16).softmax(-1).max(-1).values.mean()
    print(f"{width:5d} {raw.std():9.1f} {(raw / math.sqrt(width)).std():16.2f}   "
          f"raw {top_raw:.2f}, scaled {top_scaled:.2f}")

# %% [markdown]
# **The causal mask.** A language model predicts the next token, so token $i$ may only read tokens
# $0..i$. Scores above the diagonal are set to $-\infty$, which the softmax turns into a weight of
# exactly zero. Then each row becomes a probability distribution over the tokens it may see.

# %%
# NBVAL_CHECK_OUTPUT
scaled = scores / math.sqrt(d)
mask = torch.ones(T, T, dtype=torch.bool).tril()          # True where query i may look at key j
weights = scaled.masked_fill(~mask, float("-inf")).softmax(dim=-1)
print("mask:\n", mask.int())
print("weights (rows sum to 1):\n", weights[0, 0].numpy().round(2))
print("row sums:", weights.sum(-1)[0, 0].numpy().round(4))

# %% [markdown]
# **The weighted sum.** Each token's output is its row of weights times the values: a blend of what
# the earlier tokens had to say. The first token can only read itself, so its output is its own value.
# MiniMind writes these four steps as `explicit_attention`; training runs PyTorch's fused
# `F.scaled_dot_product_attention` (SDPA), which never stores the $T \times T$ matrix. All three agree:

# %%
# NBVAL_CHECK_OUTPUT
out = weights @ v
out_explicit, w_explicit = explicit_attention(q, k, v, is_causal=True, return_weights=True)
out_sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
print("token 0 reads only itself:", torch.allclose(out[..., 0, :], v[..., 0, :]))
print("by hand == explicit_attention:", torch.allclose(out, out_explicit, atol=1e-6),
      "| weights equal:", torch.allclose(weights, w_explicit, atol=1e-6))
print("by hand == F.scaled_dot_product_attention:", torch.allclose(out, out_sdpa, atol=1e-6),
      "| max diff < 1e-6:", (out - out_sdpa).abs().max().item() < 1e-6)

# %% [markdown]
# ## Many heads
# One softmax can only look one way at a time. **Multi-head** attention splits the model width into
# `num_attention_heads` heads of width `head_dim`, each with its own query, key and value projections,
# so one head can track the previous token while another looks for a name. The heads run side by
# side as one batched matmul, their outputs are concatenated, and `o_proj` mixes them back into the
# model width. Below, the chosen preset's attention layer is taken apart by hand and put back together.
# (Rotary position embeddings, `cos` and `sin`, are the next chapter's subject.)

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
attn = Attention(cfg).eval()
x = torch.randn(1, 12, cfg.hidden_size)                              # 12 token vectors
cos, sin = rope_cos_sin(rope_inv_freq(cfg.head_dim, cfg.rope_theta), torch.arange(12)[None])
with torch.no_grad():
    print("q_proj(x):", tuple(attn.q_proj(x).shape), "-> heads:",
          tuple(attn.q_proj(x).view(1, 12, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2).shape))
    print("k_proj(x):", tuple(attn.k_proj(x).shape), "-> heads:",
          tuple(attn.k_proj(x).view(1, 12, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2).shape))
    print("layer output:", tuple(attn(x, cos, sin).shape), "(same width as the input)")

# %% [markdown]
# The query projection has `num_attention_heads` heads but the key projection only
# `num_key_value_heads`. That is grouped-query attention, the next section. First, the layer computed
# by hand, head by head, with the explicit formula, equals the layer itself (which runs SDPA):

# %%
# NBVAL_CHECK_OUTPUT
H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
with torch.no_grad():
    qh = apply_rope(attn.q_proj(x).view(1, 12, H, hd).transpose(1, 2), cos, sin)
    kh = apply_rope(attn.k_proj(x).view(1, 12, KV, hd).transpose(1, 2), cos, sin)
    vh = attn.v_proj(x).view(1, 12, KV, hd).transpose(1, 2)
    heads = [explicit_attention(qh[:, h:h + 1], kh[:, h // (H // KV)][:, None], vh[:, h // (H // KV)][:, None],
                                is_causal=True) for h in range(H)]       # one head at a time
    by_hand = attn.o_proj(torch.cat(heads, dim=1).transpose(1, 2).reshape(1, 12, H * hd))
    print("heads by hand, concatenated, o_proj == Attention layer:",
          torch.allclose(by_hand, attn(x, cos, sin), atol=1e-5))

# %% [markdown]
# ## Grouped-query attention (GQA)
# In GQA several query heads share one key/value head: the query heads are cut into consecutive groups,
# one group per KV head, and every head of a group reads the same keys and values. Quality stays close to full multi-head attention
# (MHA, one KV head per query head), but there are fewer keys and values to compute and, above all,
# to **store**: during generation every layer keeps the keys and values of every past token (the KV
# cache, next section), and that cache, not the weights, is what fills a GPU's memory on long contexts.
#
# Two ways to compute it give the same numbers: copy each KV head to its group (`repeat_kv`) and run
# ordinary attention, or let SDPA broadcast the groups itself (`enable_gqa=True`, no copy).

# %%
# NBVAL_CHECK_OUTPUT
n_rep = H // KV
print(f"{H} query heads, {KV} KV heads: query head h reads KV head h // {n_rep}:",
      [h // n_rep for h in range(H)])
with torch.no_grad():
    gqa_copy = explicit_attention(qh, repeat_kv(kh, n_rep), repeat_kv(vh, n_rep), is_causal=True)
    gqa_sdpa = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
print("repeat_kv + explicit == SDPA(enable_gqa=True):", torch.allclose(gqa_copy, gqa_sdpa, atol=1e-5))

# %% [markdown]
# The cache holds, per token and per layer, one key and one value vector for each KV head:
# $2 \times \text{layers} \times \text{kv heads} \times \text{head dim}$ numbers. Computed from each
# preset's config, in bfloat16 (2 bytes a number), for a 2048-token context:

# %%
# NBVAL_CHECK_OUTPUT
def kv_cache_bytes(c: MiniMindConfig, tokens: int, kv_heads: int, bytes_per_number: int = 2) -> int:
    return 2 * c.num_hidden_layers * kv_heads * c.head_dim * tokens * bytes_per_number

print(f"{'preset':16s} {'heads':>5s} {'kv':>3s} {'KB/token':>9s} {'GQA, 2048 tok':>14s} {'MHA, 2048 tok':>14s} {'saved':>6s}")
for name in PRESETS:
    c = MiniMindConfig.from_preset(name)
    gqa = kv_cache_bytes(c, 2048, c.num_key_value_heads)
    mha = kv_cache_bytes(c, 2048, c.num_attention_heads)
    print(f"{name:16s} {c.num_attention_heads:5d} {c.num_key_value_heads:3d} {gqa / 2048 / 1024:9.1f} "
          f"{gqa / 2**20:11.1f} MB {mha / 2**20:11.1f} MB {mha / gqa:5.0f}x")

# %% [markdown]
# ## The KV cache
# Generating text is a loop: run the model, pick the next token, append it, run again. Run naively, each
# step recomputes the keys and values of the whole prefix, although they never change: token $j$'s key
# depends only on tokens $0..j$. The **KV cache** keeps them. The first call processes the prompt and
# stores every layer's keys and values; each later call feeds one new token, whose query attends over
# the cached keys plus its own. Decoding token by token with the cache gives the same logits as running
# the full sequence at once (a fresh model of the chosen preset, random weights):

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
model = MiniMindForCausalLM(cfg).eval()
ids = torch.randint(3, cfg.vocab_size, (1, 24))
with torch.no_grad():
    full = model(ids).logits                                   # all 24 positions at once
    out = model(ids[:, :8], use_cache=True)                    # an 8-token prompt fills the cache
    steps = [out.logits]
    for t in range(8, 24):                                     # then one token at a time
        out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
cache = out.past_key_values
print("cached decoding == full recomputation:", torch.allclose(torch.cat(steps, 1), full, atol=1e-4))
stored = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
print(f"cache: {len(cache)} tokens, {stored:,} bytes == formula (float32):",
      stored == kv_cache_bytes(cfg, len(cache), cfg.num_key_value_heads, bytes_per_number=4))

# %% [markdown]
# **What the cache saves.** Without it, step $t$ runs the whole model over $t$ tokens, so each step
# costs more than the last and a whole generation grows like $T^2$. With it, every step runs the model
# over a single token (only the attention over the cache grows with $t$). Timing both on this machine:

# %%
def decode_step_times(model, prompt, new_tokens: int, use_cache: bool) -> list[float]:
    times, ids = [], prompt
    with torch.no_grad():
        out = model(ids, use_cache=use_cache)
        for _ in range(new_tokens):
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            ids = torch.cat([ids, token], dim=1)
            out = (model(token, past_key_values=out.past_key_values, use_cache=True) if use_cache
                   else model(ids))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return times

# %%
model = model.to(dev)
prompt, new_tokens = torch.randint(3, cfg.vocab_size, (1, 32), device=dev), 128
decode_step_times(model, prompt, 4, True)  # warm up
def best_of_two(flag):  # the faster of two runs, step by step: less noise from other programs
    return [min(a, b) for a, b in zip(*(decode_step_times(model, prompt, new_tokens, flag) for _ in range(2)))]
t_cache, t_full = best_of_two(True), best_of_two(False)
speedup = sum(t_full) / sum(t_cache)
print(f"{new_tokens} new tokens after a {prompt.shape[1]}-token prompt: {sum(t_cache):.2f} s with the cache, "
      f"{sum(t_full):.2f} s recomputing, {speedup:.1f}x faster")

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
lengths = range(prompt.shape[1] + 1, prompt.shape[1] + 1 + len(t_cache))
ax.plot(lengths, [1e3 * t for t in t_full], label="recompute the prefix every step")
ax.plot(lengths, [1e3 * t for t in t_cache], label="KV cache: one token per step")
ax.set(xlabel="sequence length at this step", ylabel="ms per new token", ylim=(0, None),
       title=f"Decoding cost per token ({preset}, {dev})")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# (Timings depend on the machine and on what else it is running; on a GPU a tiny model is so cheap that
# both curves sit near the launch overhead. The gap widens with the model and the context.)
#
# ## Looking inside: what does each head read?
# A model with random weights attends almost uniformly, which shows nothing. To get heads worth
# looking at, a very small model trains for a few seconds on a copying task: a random sequence, then
# the same sequence again. The second half is
# predictable only by looking back, so attention has to learn where to look.

# %%
toy_cfg = MiniMindConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
torch.manual_seed(0)
toy, n = MiniMindForCausalLM(toy_cfg), 11
opt = torch.optim.AdamW(toy.parameters(), lr=3e-3)
for step in range(steps := 150):
    half = torch.randint(3, 64, (32, n))
    x = torch.cat([half, half], dim=1)
    labels = x.masked_fill(torch.arange(2 * n) < n, -100)   # no loss on the unpredictable first half
    toy(x, labels=labels).loss.backward()
    opt.step()
    opt.zero_grad()
toy_loss = toy(x, labels=labels).loss.item()
print(f"toy model: {toy.num_parameters():,} parameters, {toy_cfg.num_hidden_layers} layers, {toy_cfg.num_attention_heads} "
      f"heads sharing {toy_cfg.num_key_value_heads} KV heads; sequences of {n} tokens, then the same {n} again")
print(f"copy-task loss after {steps} steps: {toy_loss:.3f} (chance, 61 possible tokens: {math.log(61):.2f})")

# %% [markdown]
# Now a sentence, repeated, with each word standing for one token. `attention_weights` (in
# `minimind.model.attention`) runs the model once and returns the softmax weights of every layer and head,
# shape (layers, batch, heads, query, key). Row $i$ of a heatmap is where token $i$ looks.

# %%
words = "the cat sat on a mat while my dog slept .".split()
vocab = {w: 3 + 5 * i for i, w in enumerate(words)}        # one token id per word
sentence = words + words
toy.eval()
attn_w = attention_weights(toy, torch.tensor([[vocab[w] for w in sentence]]))
print("weights:", tuple(attn_w.shape))

# %%
def heatmap(ax, w, labels, title):
    ax.imshow(w, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(title=title, xlabel="key (read)", ylabel="query (reading)")

fig, axes = plt.subplots(2, 4, figsize=(14, 7.4))
for layer in range(2):
    for head in range(4):
        heatmap(axes[layer, head], attn_w[layer, 0, head], sentence, f"layer {layer}, head {head}")
plt.tight_layout()
plt.show()

# %% [markdown]
# Every picture is lower-triangular: the causal mask at work. Two kinds of stripe stand out. A stripe just
# below the diagonal means "read the previous token"; a stripe further down means "read the token a
# fixed distance back". The cell below finds, for each head, how far back it looks on the rows whose next
# token is a copy (the last word of the first half onwards) and how much weight it puts there:

# %%
rows = torch.arange(n - 1, 2 * n - 1)                       # queries whose next token is a copy
for layer in range(2):
    for head in range(4):
        back = (rows - attn_w[layer, 0, head, rows].argmax(-1)).mode().values.item()
        weight = attn_w[layer, 0, head, rows, rows - back].mean().item()
        print(f"layer {layer}, head {head}: looks {back} tokens back, mean weight {weight:.2f}")
copy_back, copy_weight = back, weight

# %% [markdown]
# Together the two layers form a small circuit. The first layer's heads read the previous token, so each
# position also carries the word before it. The last layer's heads then read from the one position
# whose *previous* word is the word to predict, a fixed number of steps back. Attention found that
# place by position alone: rotary embeddings (next chapter) make "k tokens back" easy to express.
#
# Counting positions is not the same as copying. If the repeated sequence has another length, the fixed
# distance points at the wrong place, and the copy fails:

# %%
for m in (n - 3, n, n + 3):
    half = torch.randint(3, 64, (64, m))
    x = torch.cat([half, half], dim=1)
    with torch.no_grad():
        hit = (toy(x).logits[:, m - 1:-1].argmax(-1) == x[:, m:]).float().mean().item()
    print(f"repeat length {m:2d}{' (trained)' if m == n else '          '}: copies {hit:.0%} of the tokens")

# %% [markdown]
# A language model trained on real text learns the general version, an **induction head**: "find the
# previous occurrence of the current token and read what came after it", by content rather than by
# distance. It takes far more data and steps than this toy; `attention_weights` works the same way on
# the model that chapter 07 pretrains.

# %% [markdown]
# ### Explore
# Pick a layer and a head. The static picture is the default view; in a live notebook the sliders
# redraw the heatmap below it.

# %%
def show_head(layer=1, head=0):
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    heatmap(ax, attn_w[layer, 0, head], sentence, f"layer {layer}, head {head}")
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="attention weight")
    plt.tight_layout()
    plt.show()

show_head()  # the static picture (the book and nbval do not run widgets)
widgets.interact(show_head, layer=widgets.IntSlider(value=1, min=0, max=attn_w.shape[0] - 1),
                 head=widgets.IntSlider(value=0, min=0, max=attn_w.shape[2] - 1));

# %% [markdown]
# ## Summary
# - Attention is four steps: scores $QK^\top$, scaling by $\sqrt{d}$, the causal mask, softmax, then
#   the weighted sum of values. `explicit_attention` writes them out; SDPA fuses them; they agree.
# - Heads split the width so that different heads can look at different things; `o_proj` mixes them.
# - GQA shares each key/value head among a group of query heads, shrinking the KV cache by the group
#   size with little loss in quality.
# - The KV cache turns each generation step from a pass over the whole prefix into a pass over one token.
#
# Next, chapter 04: how the model knows *where* each token is (rotary position embeddings).

# %%
record(run_dir, "03_attention", sdpa_matches_explicit=bool(torch.allclose(out_explicit, out_sdpa, atol=1e-6)),
       kv_cache_kb_per_token_bf16=round(kv_cache_bytes(cfg, 1, cfg.num_key_value_heads) / 1024, 2),
       gqa_cache_saving=f"{cfg.num_attention_heads // cfg.num_key_value_heads}x",
       kv_cache_speedup=round(speedup, 2), copy_task_loss=round(toy_loss, 4),
       copy_head_looks_back=copy_back, copy_head_weight=round(copy_weight, 3))

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. Causal attention (implement).** Write `attention(q, k, v)` for tensors of shape (B, H, T, d): the
# formula at the top of the chapter, with the causal mask. The check compares it with PyTorch's fused kernel,
# and tells you if a token can see the future.

# %%
def attention(q, k, v):
    ...  # your code: (B, H, T, d)


check("03.causal_attention", attention)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def attention(q, k, v):
    t, d = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)                   # (B, H, T, T)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)  # True above the diagonal
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


assert check("03.causal_attention", attention)

# %% [markdown]
# **2. Share the keys (implement).** With GQA, query head $h$ reads KV head $h \,//\, n_{rep}$. Write
# `repeat_kv(x, n_rep)`: (B, KV heads, T, d) to (B, KV heads × n_rep, T, d), each KV head repeated
# `n_rep` times in a row.

# %%
def repeat_kv(x, n_rep):
    ...  # your code


check("03.repeat_kv", repeat_kv)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def repeat_kv(x, n_rep):
    return x.repeat_interleave(n_rep, dim=1)  # heads 0, 0, 1, 1, ...; x.repeat would tile 0, 1, 0, 1


assert check("03.repeat_kv", repeat_kv)

# %% [markdown]
# **3. One step with the cache (implement).** Generation feeds one new token at a time. Write
# `step(q, k_cache, v_cache, k_new, v_new)`: q, k_new and v_new are the new token's (B, H, 1, d), the caches
# the earlier tokens' (B, H, T, d). Return the new token's attention output and the caches with its key and
# value appended. The check compares it with attention recomputed over the whole sequence: the cache
# changes the cost, never the result.

# %%
def step(q, k_cache, v_cache, k_new, v_new):
    ...  # your code: (out, k_cache, v_cache)


check("03.kv_cache_step", step)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def step(q, k_cache, v_cache, k_new, v_new):
    k_cache, v_cache = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)  # (B, H, T + 1, d)
    weights = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, 1, T + 1)
    return weights @ v_cache, k_cache, v_cache  # no mask: the newest token may look at every earlier one


assert check("03.kv_cache_step", step)
