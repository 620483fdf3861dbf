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
# # 05 · The model
#
# Chapters 03 and 04 built attention and rotary positions. This chapter adds the remaining pieces and
# assembles MiniMind: **RMSNorm**, the **SwiGLU** feed-forward, the **pre-norm decoder block**, and the
# whole `MiniMindForCausalLM`. Then we count where its parameters live, run a first forward pass, and
# prove that it *is* a Llama: exported to transformers, `LlamaForCausalLM` computes the same logits. Last,
# MiniMind's 2026 generation, minimind-3, side by side with MiniMind2: what q/k-norm changes, measured.
# The model is untrained throughout; what it generates is gibberish, and that is the point.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe | minimind-3 | minimind-3-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's published datasets)
device = "auto"        # auto | cpu | cuda | mps
out_dir = None         # where this run writes; None means runs/<preset>

# %%
import math
import os
import tempfile

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minimind import MiniMindConfig, MiniMindForCausalLM, PRESETS
from minimind.course import record, runs_dir
from minimind.course.anatomy import (COMPONENTS, attention_logit_growth, generation_table, parameter_breakdown,
                                    plot_parameter_breakdown, scaled_config)
from minimind.model.layers import FeedForward, RMSNorm
from minimind.model.rope import rope_cos_sin
from minimind.train.runtime import pick_device

run_dir = runs_dir(preset, out_dir)
dev = pick_device(device)
cfg = MiniMindConfig.from_preset(preset)
print(f"preset {preset}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
      f"{cfg.num_attention_heads} heads ({cfg.num_key_value_heads} KV), SwiGLU width {cfg.intermediate_size}, "
      f"vocab {cfg.vocab_size}; device {dev}")

# %% [markdown]
# ## RMSNorm
# Every sub-layer of the model reads a *normalised* copy of its input, so that the scale of the signal
# stays the same from layer to layer. The classic choice, LayerNorm, centres and rescales each vector:
#
# $$\mathrm{LayerNorm}(x) = \frac{x - \mu(x)}{\sqrt{\sigma^2(x) + \epsilon}}\, g + b .$$
#
# RMSNorm (Zhang and Sennrich, 2019), used by Llama and MiniMind, drops the centring and the bias and
# divides by the root mean square only:
#
# $$\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\tfrac{1}{d}\sum_j x_j^2 + \epsilon}}\, g .$$
#
# It is cheaper (one reduction instead of two) and trains as well. Below both are computed by hand on
# token vectors whose mean is far from zero, and compared with `minimind.model.layers.RMSNorm` and PyTorch's
# LayerNorm. The difference shows in the outputs: LayerNorm removes the mean, RMSNorm keeps the
# direction of the vector and only fixes its length (every output has a root mean square of 1).

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
d, eps = cfg.hidden_size, cfg.rms_norm_eps
x = torch.randn(3, d) + 2.0                     # three token vectors, mean about 2
rms_by_hand = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
ln_by_hand = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
print("RMSNorm by hand equals minimind.model.layers.RMSNorm:", torch.allclose(rms_by_hand, RMSNorm(d, eps)(x), atol=1e-6))
print("LayerNorm by hand equals F.layer_norm:         ", torch.allclose(ln_by_hand, F.layer_norm(x, (d,), eps=eps), atol=1e-5))
for name, y in (("input", x), ("RMSNorm", rms_by_hand), ("LayerNorm", ln_by_hand)):
    mean, rms = y.mean().item(), y.pow(2).mean().sqrt().item()
    print(f"{name:10s} mean {round(mean, 2) + 0.0:5.2f}   root mean square {rms:5.2f}")
print("parameters of one RMSNorm (the gain g):", sum(p.numel() for p in RMSNorm(d).parameters()))

# %% [markdown]
# ## SwiGLU, the feed-forward network
# After attention has mixed information *between* tokens, the feed-forward network transforms each
# token on its own. MiniMind uses SwiGLU (Shazeer, 2020):
#
# $$\mathrm{FFN}(x) = W_\text{down}\big(\mathrm{SiLU}(W_\text{gate}\,x) \odot W_\text{up}\,x\big),
# \qquad \mathrm{SiLU}(z) = z\,\sigma(z).$$
#
# The *gate* branch decides, channel by channel, how much of the *up* branch passes: a multiplicative
# interaction that a plain `ReLU` MLP lacks. SiLU is a smooth ReLU that lets a little negative signal
# through.
#
# **Why 8/3.** A classic transformer MLP has two matrices, $d \times 4d$ and $4d \times d$: $8d^2$
# parameters. SwiGLU has three, so with the same budget each is $d \times \tfrac{8}{3}d$. MiniMind rounds
# $\tfrac{8}{3}d$ up to a multiple of 64, a shape the matrix-multiply kernels like.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
ffn = FeedForward(cfg.hidden_size, cfg.intermediate_size)
x = torch.randn(2, 5, cfg.hidden_size)
gate = x @ ffn.gate_proj.weight.T
by_hand = (gate * torch.sigmoid(gate) * (x @ ffn.up_proj.weight.T)) @ ffn.down_proj.weight.T
print("SwiGLU by hand equals minimind.model.layers.FeedForward:", torch.allclose(by_hand, ffn(x), atol=1e-6))
print(f"\n{'preset':16s} {'hidden':>6s} {'8/3 hidden':>10s} {'width':>6s} {'3*d*w / 8d^2':>13s}")
for name in PRESETS:
    c = MiniMindConfig.from_preset(name)
    h, w = c.hidden_size, c.intermediate_size
    print(f"{name:16s} {h:6d} {h * 8 / 3:10.1f} {w:6d} {3 * h * w / (8 * h * h):13.3f}")

# %%
z = torch.linspace(-5, 5, 201)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
axes[0].plot(z, F.relu(z), label="ReLU", linestyle="--")
axes[0].plot(z, F.silu(z), label="SiLU  z·σ(z)")
axes[0].plot(z, torch.sigmoid(z), label="σ(z)", linestyle=":")
axes[0].set_title("the activation")
axes[0].legend()
up = torch.linspace(-2, 2, 5)  # what the up branch offers; the gate lets a share of it through
for u in up:
    axes[1].plot(z, F.silu(z) * u, label=f"up = {u:.0f}")
axes[1].set_title("SiLU(gate) × up: the gate scales what passes")
axes[1].set_xlabel("gate pre-activation")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(run_dir / "05_swiglu.png", dpi=100)
plt.show()

# %% [markdown]
# ## The pre-norm decoder block
# A block adds two things to the *residual stream* $x$, each computed from a normalised copy:
#
# $$x \leftarrow x + \mathrm{Attention}(\mathrm{RMSNorm}(x)), \qquad
#   x \leftarrow x + \mathrm{FFN}(\mathrm{RMSNorm}(x)).$$
#
# Normalising the *input* of each branch (pre-norm, as in GPT-2 and Llama) instead of its output
# (post-norm, the original transformer) leaves a clean path of additions from the last layer back to
# the embedding: gradients reach early layers undamped, and deep stacks train without delicate warm-up.
# The cell builds the model and recomputes its first block by hand from its parts.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
model = MiniMindForCausalLM(cfg).eval()
block = model.model.layers[0]
x = torch.randn(2, 10, cfg.hidden_size)
positions = torch.arange(10).expand(2, 10)
cos, sin = rope_cos_sin(model.model.inv_freq, positions, model.model.attention_factor)
with torch.no_grad():
    h = x + block.self_attn(block.input_layernorm(x), cos, sin)     # attention adds to the stream
    by_hand = h + block.mlp(block.post_attention_layernorm(h))      # then the feed-forward network
    print("block by hand equals DecoderLayer:", torch.allclose(by_hand, block(x, cos, sin), atol=1e-5))

# %% [markdown]
# ## The whole model
# Token ids become vectors (`embed_tokens`), pass through the stack of blocks, a final RMSNorm, and the
# output head `lm_head` turns each vector into one score (logit) per vocabulary entry. MiniMind *ties*
# the head to the embedding: one $V \times d$ matrix reads tokens in and writes them out. Module names
# follow transformers' Llama exactly (`q_proj`, `gate_proj`, `input_layernorm`, ...); that is what makes
# the export at the end of this chapter a renaming-free copy.

# %%
# NBVAL_CHECK_OUTPUT
print(model)
print("lm_head is the embedding matrix:", model.lm_head.weight is model.model.embed_tokens.weight)

# %% [markdown]
# ## Where the parameters are
# Per layer, with width $d$, $n_{kv}$ KV heads of size $d_h$ and SwiGLU width $w$:
#
# | component | parameters |
# | --- | --- |
# | embedding (tied with the head) | $V d$, once |
# | attention | $2d^2$ for `q_proj`, `o_proj` $+\; 2 d\, n_{kv} d_h$ for `k_proj`, `v_proj` (GQA makes these small) |
# | MLP | $3 d w$ |
# | norms | $2d$ per layer $+\; d$ for the final norm |
#
# `minimind.course.anatomy.parameter_breakdown` does not use these formulas: it builds the model on PyTorch's
# `meta` device (shapes only, no memory, so even the 145M preset costs nothing) and adds up the
# parameters by name. The unit tests check that both agree; here are the presets.

# %%
# NBVAL_CHECK_OUTPUT
breakdowns = {name: parameter_breakdown(MiniMindConfig.from_preset(name)) for name in PRESETS}
parts = [c for c in COMPONENTS if any(c in b for b in breakdowns.values())]
print(f"{'':15s}" + "".join(f"{name:>18s}" for name in PRESETS))
for part in parts + ["total"]:
    row = ""
    for b in breakdowns.values():
        n, total = (sum(b.values()) if part == "total" else b.get(part, 0)), sum(b.values())
        row += f"{n:>12,d} ({100 * n / total:2.0f}%)" if n else f"{'-':>18s}"
    print(f"{part:15s}{row}")
with torch.device("meta"):
    print("sums equal num_parameters():",
          all(sum(b.values()) == MiniMindForCausalLM(MiniMindConfig.from_preset(n)).num_parameters()
              for n, b in breakdowns.items()))

# %%
fig = plot_parameter_breakdown(breakdowns)
fig.savefig(run_dir / "05_parameters.png", dpi=100)
plt.show()

# %% [markdown]
# In a small model the vocabulary is expensive: the embedding is the `tiny` model's largest component. The embedding grows like $V d$ while the blocks grow like $L d^2$, so as a model gets wider
# and deeper the blocks take over, and in the MoE preset the routed experts dominate (chapter 06).
#
# **Explore.** Pick a preset and change its width and depth; the right-hand bar is your model, the
# left-hand one the preset (the SwiGLU width follows the 8/3 rule; head counts are kept where they
# divide the width). The static picture below doubles the current preset's width and depth.

# %%
import ipywidgets as widgets


def explore(base="tiny", hidden_size=384, num_hidden_layers=8, vocab_size=6400):
    mine = scaled_config(base, hidden_size, num_hidden_layers, vocab_size)
    fig = plot_parameter_breakdown({base: parameter_breakdown(MiniMindConfig.from_preset(base)),
                                    f"d={hidden_size}, L={num_hidden_layers}": parameter_breakdown(mine)})
    plt.show()


explore(preset, 2 * cfg.hidden_size, 2 * cfg.num_hidden_layers, cfg.vocab_size)  # the static picture
widgets.interact(explore, base=list(PRESETS),
                 hidden_size=widgets.IntSlider(value=2 * cfg.hidden_size, min=64, max=2048, step=64),
                 num_hidden_layers=widgets.IntSlider(value=2 * cfg.num_hidden_layers, min=1, max=48),
                 vocab_size=widgets.Dropdown(options=[6400, 32000, 151936], value=6400));

# %% [markdown]
# ## Two generations: MiniMind2 and minimind-3
# In 2026 MiniMind released **minimind-3**, aligned with Qwen3. The block is the same; what changed:
# - **q/k-norm**: an RMSNorm over each head's query and each head's key, just before RoPE
#   (`self_attn.q_norm`, `self_attn.k_norm`, one weight per head channel);
# - the head width is a field of its own (`head_dim`), and 4 KV heads instead of 2;
# - a wider SwiGLU, $\lceil \pi d / 64 \rceil \cdot 64$ instead of $\tfrac{8}{3} d$, and RMSNorm's
#   $\epsilon$ 1e-6 instead of 1e-5;
# - the MoE model routes each token to **one** of 4 experts, with no shared expert.
#
# The same `MiniMindForCausalLM` builds both (`qk_norm=True` in the config). Side by side:

# %%
# NBVAL_CHECK_OUTPUT
generations = generation_table(["minimind2-small", "minimind2", "minimind-3", "minimind2-moe", "minimind-3-moe"])
print(f"{'preset':16s} {'params':>8s} {'active':>8s} {'d':>4s} {'L':>2s} {'heads':>8s} {'ffn/d':>5s} "
      f"{'q/k-norm':>8s} {'KV KiB/tok':>10s}  MoE")
for g in generations:
    print(f"{g['preset']:16s} {g['params'] / 1e6:7.1f}M {g['active'] / 1e6:7.1f}M {g['hidden']:4d} {g['layers']:2d} "
          f"{g['heads']:>2d}/{g['kv_heads']}x{g['head_dim']:<3d} {g['ffn'] / g['hidden']:5.2f} "
          f"{'yes' if g['qk_norm'] else 'no':>8s} {g['kv_bytes_per_token'] / 1024:10.1f}  {g['moe']}")

# %% [markdown]
# minimind-3 spends its budget on width: 768 wide and 8 deep (MiniMind2's 104M model was 16 deep), a
# wider MLP, and twice the KV heads, so each token's KV cache (bf16, every layer) costs three times
# MiniMind2-small's. Its MoE model holds three times the parameters of the dense one and uses the same
# number per token: top-1 of 4 experts each as wide as the dense MLP.
#
# **What q/k-norm buys.** An attention logit is $q \cdot k / \sqrt{d_h}$. Without the norm, both $q$
# and $k$ grow with their projection weights, so the logits grow with the *square* of the weights' scale;
# as training grows the weights, the softmax can saturate on one token and its gradients vanish (the
# "attention logit growth" that destabilises large runs). With the norm, every head's $q$ and $k$ have
# root-mean-square 1 whatever the weights do; the logits' scale is left to the two small `q_norm`/`k_norm`
# weight vectors. Measured on one attention layer of minimind-3's shape, its `q_proj` and `k_proj` scaled
# up by $s$:

# %%
# NBVAL_CHECK_OUTPUT
scales = [1, 2, 4, 8, 16]
growth = {qk: attention_logit_growth(MiniMindConfig.from_preset("minimind-3", qk_norm=qk), scales)
          for qk in (False, True)}
print(f"{'scale s':>8s} {'max logit':>18s} {'attention entropy':>22s}   (uniform over 64 tokens: "
      f"{math.log(64):.2f} nats at most)")
print(f"{'':8s} {'plain':>8s} {'q/k-norm':>9s} {'plain':>10s} {'q/k-norm':>11s}")
for i, s in enumerate(scales):
    print(f"{s:8d} {growth[False]['max_logit'][i]:8.1f} {growth[True]['max_logit'][i]:9.1f} "
          f"{growth[False]['entropy'][i]:10.2f} {growth[True]['entropy'][i]:11.2f}")
growth_ratio = growth[False]["max_logit"][-1] / growth[False]["max_logit"][0]
print(f"plain: 16x the weights gave {growth_ratio:.0f}x the logits (16^2 = 256); q/k-norm: "
      f"{growth[True]['max_logit'][-1] / growth[True]['max_logit'][0]:.2f}x")

# %% [markdown]
# Without the norm, attention collapses to almost one token per query as the weights grow (entropy near
# 0); with it, nothing moves. The price is $2 d_h$ parameters per layer and two small norms per step.
#
# ## A first forward pass
# Random token ids in, logits out: one score per vocabulary entry at each position. With `labels`, the
# model also returns the next-token cross-entropy (labels are shifted inside, as in transformers).
#
# At initialisation every weight is drawn with standard deviation 0.02, so the logits are all close to
# zero, the softmax is close to uniform, and the loss is close to $\ln V$: the cost of guessing
# uniformly among $V$ tokens. A little above it, because the logits are not exactly equal: for logits
# spread with standard deviation $s$ around the target's, the expected loss is about
# $\ln V + s^2/2$. A model that starts far above $\ln V$ is confidently wrong and wastes its first
# steps unlearning that; a good initialisation starts here.

# %%
# NBVAL_CHECK_OUTPUT
model = model.to(dev)
torch.manual_seed(0)
ids = torch.randint(0, cfg.vocab_size, (4, 64)).to(dev)  # drawn on the CPU: the same ids on every device
with torch.no_grad():
    out = model(ids, labels=ids)
spread = out.logits.float().std().item()
print("initial weight std", cfg.initializer_range)
print("logits", tuple(out.logits.shape), " (batch, positions, vocabulary)")
print(f"loss at init        {out.loss.item():.2f}")
print(f"ln(vocab)           {math.log(cfg.vocab_size):.2f}")
print(f"ln(vocab) + s^2/2   {math.log(cfg.vocab_size) + spread ** 2 / 2:.2f}   (s = logit std {spread:.2f})")

# %% [markdown]
# ## The same model in transformers
# `minimind.use.export.export_hf` writes a folder with a Llama `config.json` and the weights under their
# (already Llama) names. transformers' `AutoModelForCausalLM` opens it without any MiniMind code, as a
# `LlamaForCausalLM` (the MoE preset becomes a `Qwen2MoeForCausalLM`, see chapter 06), and on the same
# ids it computes the same logits, up to float rounding. Same numbers, two independent implementations:
# the strongest test that every piece of this chapter is right.

# %%
# NBVAL_CHECK_OUTPUT
import transformers

from minimind.use.export import export_hf

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
with tempfile.TemporaryDirectory() as tmp:
    export_hf(model, tmp)
    print("exported:", sorted(os.listdir(tmp)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp).to(dev).eval()
with torch.no_grad():
    diff = (hf(ids).logits - model(ids).logits).abs().max().item()
hf_class = type(hf).__name__
print("transformers class:", hf_class)
print("max |logit difference| < 1e-4:", diff < 1e-4)

# %%
print(f"max |logit difference| = {diff:.1e}")
del hf

# %% [markdown]
# minimind-3 is a Qwen3, exactly: its export is a `Qwen3ForCausalLM` (and minimind-3-moe a
# `Qwen3MoeForCausalLM`), whose attention has the same q/k-norm. Checked here on its real shapes with two
# layers, to stay quick:

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
mm3 = MiniMindForCausalLM(MiniMindConfig.from_preset("minimind-3", num_hidden_layers=2)).eval()
with tempfile.TemporaryDirectory() as tmp:
    export_hf(mm3, tmp)
    hf3 = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()
with torch.no_grad():
    ids3 = ids[:, :32].cpu()
    diff3 = (hf3(ids3).logits - mm3(ids3).logits).abs().max().item()
hf3_class = type(hf3).__name__
print("transformers class:", hf3_class)
print("max |logit difference| < 1e-4:", diff3 < 1e-4)
del hf3, mm3

# %% [markdown]
# ## Saving and loading
# A MiniMind checkpoint is a folder: `config.json` (every shape, so nobody has to remember the preset)
# and `model.safetensors` (the tied matrix stored once). Loading it back gives bit-identical logits.

# %%
# NBVAL_CHECK_OUTPUT
with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    print("files:", sorted(os.listdir(tmp)))
    again = MiniMindForCausalLM.from_pretrained(tmp, device=dev).eval()
with torch.no_grad():
    print("identical logits after the round trip:", torch.equal(again(ids).logits, model(ids).logits))
print("still tied:", again.lm_head.weight is again.model.embed_tokens.weight)

# %% [markdown]
# ## Generating from an untrained model
# `generate` feeds the model its own output one token at a time, with a KV cache (chapter 03). Greedy
# decoding takes the most likely token every time; sampling draws from the softmax (here with
# temperature 1 and top-k 50). The model knows nothing yet, so both produce noise: greedy decoding
# typically locks onto one token and repeats it, sampling wanders at random over the vocabulary. These
# are token ids; chapter 01's tokenizer would turn them into text, just as meaningless. Chapter 07 turns
# this noise into language.

# %%
prompt = torch.tensor([[cfg.bos_token_id, 100, 200, 300]], device=dev)
greedy = model.generate(prompt, max_new_tokens=20)[0, prompt.shape[1]:].tolist()
gen = torch.Generator(device=dev).manual_seed(0)
sampled = model.generate(prompt, max_new_tokens=20, do_sample=True, temperature=1.0, top_k=50,
                         generator=gen)[0, prompt.shape[1]:].tolist()
print("greedy: ", greedy, f"({len(set(greedy))} distinct)")
print("sampled:", sampled, f"({len(set(sampled))} distinct)")

# %% [markdown]
# ## What this chapter measured

# %%
total = sum(breakdowns[preset].values())
record(run_dir, "05_model", params=total, params_embedding_share=round(breakdowns[preset]["embedding"] / total, 3),
       loss_at_init=round(out.loss.item(), 3), ln_vocab=round(math.log(cfg.vocab_size), 3),
       hf_class=hf_class,
       max_logit_diff_vs_transformers=float(f"{diff:.2e}"),
       minimind3_hf_class=hf3_class, minimind3_max_logit_diff=float(f"{diff3:.2e}"),
       qk_norm_logit_growth_plain=round(growth_ratio, 1))

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. RMSNorm (implement).** Write `rms_norm(x, weight, eps)`: x over the root of its mean square (last
# dimension), times the weight. The check compares it with MiniMind's `RMSNorm`, and tells you if you wrote
# LayerNorm instead.

# %%
def rms_norm(x, weight, eps):
    ...  # your code


check("05.rms_norm", rms_norm)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def rms_norm(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # no mean subtracted, no bias


assert check("05.rms_norm", rms_norm)

# %% [markdown]
# **2. SwiGLU (implement).** Write `swiglu(x, gate_w, up_w, down_w)` from the three weight matrices, as
# `nn.Linear` stores them (out × in).

# %%
def swiglu(x, gate_w, up_w, down_w):
    ...  # your code


check("05.swiglu", swiglu)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def swiglu(x, gate_w, up_w, down_w):
    return (torch.nn.functional.silu(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


assert check("05.swiglu", swiglu)

# %% [markdown]
# **3. Count the parameters (implement).** Write `count_parameters(config)` from the config's numbers alone
# (no model): the attention and SwiGLU matrices and the two norms of each layer, the embedding (shared with
# the output head), the final norm. The check builds tiny, MiniMind2-small and MiniMind2 and compares.

# %%
def count_parameters(config):
    ...  # your code: an int


check("05.count_parameters", count_parameters)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def count_parameters(c):
    h, d = c.hidden_size, c.head_dim
    attention = 2 * h * c.num_attention_heads * d + 2 * h * c.num_key_value_heads * d  # q, o; k, v
    layer = attention + 3 * h * c.intermediate_size + 2 * h                          # + SwiGLU + two norms
    head = 0 if c.tie_word_embeddings else c.vocab_size * h
    return c.num_hidden_layers * layer + c.vocab_size * h + head + h                 # + embedding, final norm


assert check("05.count_parameters", count_parameters)
