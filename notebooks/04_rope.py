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
# # 04 · RoPE and YaRN
#
# Attention by itself does not know the order of the tokens: it compares every query with every key,
# and shuffling the earlier tokens only shuffles the terms of a sum. Something has to tell the model
# *where* each token is. MiniMind, like Llama, uses **rotary position embeddings** (RoPE, Su et al.
# 2021): before the dot product, each query and key is rotated by an angle proportional to its position.
# The angles cancel into a *difference*, so the score between two tokens depends on how far apart they
# are, not where they sit. This chapter shows the rotation, proves the relative-position property
# numerically, looks at the spectrum of rotation speeds, and then at what happens past the context the
# model was trained on, and how **YaRN** stretches it.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's published datasets)
device = "auto"        # auto | cpu | cuda | mps
out_dir = None         # where this run writes; None means runs/<preset>

# %%
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.course import record, runs_dir
from minimind.model.attention import explicit_attention
from minimind.model.rope import apply_rope, inv_freq_for, rope_cos_sin, rope_inv_freq, yarn_inv_freq
from minimind.use.bench_minimind_code import minimind_rope_scaling

run_dir = runs_dir(preset, out_dir)
cfg = MiniMindConfig.from_preset(preset)
d, theta = cfg.head_dim, cfg.rope_theta
inv_freq = rope_inv_freq(d, theta)
print(f"preset {preset}: head_dim {d} = {d // 2} channel pairs, rope_theta {theta:g}")

# %% [markdown]
# First, the problem. Without positions, the last token's attention output is the same whatever order
# the earlier tokens come in:

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
q, k, v = torch.randn(3, 1, 1, 6, d).unbind(0)
perm = torch.tensor([3, 0, 4, 2, 1, 5])                  # shuffle tokens 0-4, keep the last one
last = explicit_attention(q, k, v, is_causal=True)[..., -1, :]
last_shuffled = explicit_attention(q[..., perm, :], k[..., perm, :], v[..., perm, :], is_causal=True)[..., -1, :]
print("last token's output unchanged by shuffling the others:", torch.allclose(last, last_shuffled, atol=1e-6))

# %% [markdown]
# ## Rotating pairs of channels
# RoPE cuts a head's $d$ channels into $d/2$ pairs and treats each pair as a point in the plane. At
# position $m$, pair $i$ is rotated by the angle $m\,\theta_i$, where
#
# $$\theta_i = \text{base}^{-2i/d}, \qquad i = 0, \dots, d/2 - 1,$$
#
# and base is `rope_theta`. In Llama's layout (which MiniMind keeps, so that checkpoints load in
# transformers) pair $i$ is channels $i$ and $i + d/2$, and the rotation is written
# `x * cos + rotate_half(x) * sin`. Rotating each pair by hand with a $2 \times 2$ rotation matrix gives
# the same vector, and the vector keeps its length: RoPE changes directions, never sizes.

# %%
# NBVAL_CHECK_OUTPUT
x = torch.randn(1, 1, 1, d)                              # one head vector (batch, heads, tokens, d)
m = 7
cos, sin = rope_cos_sin(inv_freq, torch.tensor([[m]]))
by_rope = apply_rope(x, cos, sin)
by_hand = torch.empty_like(x)
for i in range(d // 2):
    a, c, s = m * inv_freq[i], x[..., i], x[..., i + d // 2]
    R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    by_hand[..., i], by_hand[..., i + d // 2] = R @ torch.stack([c, s]).flatten()
print("apply_rope == one 2x2 rotation per channel pair:", torch.allclose(by_rope, by_hand, atol=1e-6))
print("length kept:", torch.allclose(by_rope.norm(), x.norm()))

# %% [markdown]
# ## The score depends only on the distance
# Rotate a query to position $m$ and a key to position $n$. A rotation by $a$ followed by the inverse
# of a rotation by $b$ is a rotation by $a - b$, so in each pair
# $\langle R_{m\theta} q, R_{n\theta} k\rangle = \langle q, R_{(n-m)\theta} k\rangle$: the score is a
# function of $m - n$ alone. Numerically, for one query vector and one key vector placed at every pair
# of positions:

# %%
# NBVAL_CHECK_OUTPUT
def rope_scores(q, k, positions, inv_freq=inv_freq, attention_factor=1.0):
    """score[m, n] = <rope(q, m), rope(k, n)> for the same q and k placed at every position."""
    cos, sin = rope_cos_sin(inv_freq, positions[None], attention_factor)
    n = len(positions)
    rq = apply_rope(q.expand(1, 1, n, -1), cos, sin)[0, 0]
    rk = apply_rope(k.expand(1, 1, n, -1), cos, sin)[0, 0]
    return rq @ rk.T

qv, kv = torch.randn(2, d)
S = rope_scores(qv, kv, torch.arange(32))
spread = max((S.diagonal(off).max() - S.diagonal(off).min()).item() for off in range(-31, 32))
print(f"scores over 32 x 32 positions: constant along every diagonal (m - n fixed): {spread < 1e-4}")
far = rope_scores(qv, kv, torch.arange(32) + 1000)
print("same 32 positions shifted by 1000: same scores:", torch.allclose(far, S, atol=1e-3 * S.abs().max()))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
im = ax1.imshow(S, cmap="RdBu_r")
ax1.set(title="score(m, n): constant along diagonals", xlabel="key position n", ylabel="query position m")
fig.colorbar(im, ax=ax1, shrink=0.8)
dist = torch.arange(0, 4096)
cos_d, sin_d = rope_cos_sin(inv_freq, dist[None])
vecs = torch.randn(256, 1, 1, d)                         # 256 tokens, each matched against itself
self_score = (apply_rope(vecs.expand(-1, 1, len(dist), -1), cos_d, sin_d) * vecs).sum(-1).mean(0)[0]
ax2.plot(dist, self_score / self_score[0])
ax2.set(xscale="symlog", title="a key matching the query: score vs distance (mean of 256)",
        xlabel="distance n - m (tokens)", ylabel="score / score at distance 0")
plt.tight_layout()
plt.show()

# %% [markdown]
# The left picture is the property: every diagonal is one colour. The right one puts a key that equals
# the query at growing distances: on average the match is strongest nearby and fades with distance, as
# the channel pairs, each turning at its own speed, fall out of step. Those speeds are the next subject.
#
# ## A spectrum of speeds
# $\theta_i$ runs geometrically from 1 radian per token (pair 0) down to about $1/\text{base}$. A pair's
# **wavelength** $2\pi/\theta_i$ is how many tokens it takes to turn once: the first pairs spin like a
# second hand and tell neighbouring tokens apart; the last pairs barely move across the whole context
# and carry coarse, long-range position. In the picture on the right, each row is one pair's cosine
# across the trained context: the first rows flicker faster than the picture can draw, the last are flat.

# %%
# NBVAL_CHECK_OUTPUT
wavelength = 2 * math.pi / inv_freq
trained_len = 2048   # L: MiniMind2's YaRN setting calls it original_max_position_embeddings
print(f"{'pair':>4s} {'theta_i (rad/token)':>20s} {'wavelength (tokens)':>20s} {f'turns in {trained_len}':>14s}")
for i in sorted({0, 1, d // 8, d // 4, 3 * d // 8, d // 2 - 1}):
    print(f"{i:4d} {inv_freq[i].item():20.3g} {wavelength[i].item():20.4g} {trained_len / wavelength[i].item():14.3g}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax1.semilogy(wavelength, "o-", ms=3)
ax1.axhline(trained_len, color="C3", ls="--", label=f"trained context, {trained_len} tokens")
ax1.set(title="Wavelength of each channel pair", xlabel="channel pair i", ylabel="tokens per full turn")
ax1.legend()
pos = torch.arange(0, trained_len)
im = ax2.pcolormesh(pos, torch.arange(d // 2), torch.cos(pos[None] * inv_freq[:, None]), cmap="RdBu_r",
                    vmin=-1, vmax=1, shading="nearest", rasterized=True)
ax2.invert_yaxis()
ax2.set(title="cos(m theta_i) over the trained context", xlabel="position m", ylabel="channel pair i")
fig.colorbar(im, ax=ax2, shrink=0.8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Past the trained length
# A pair that turns many times within the trained context has seen every angle during training. A pair
# whose wavelength is longer than the context has only seen an arc of its circle: beyond the trained
# length it reaches angles the model never met, and the attention scores built on them are
# out of distribution. That, rather than anything about attention itself, is why a model trained on
# short texts degrades on long ones.

# %%
# NBVAL_CHECK_OUTPUT
covered = (trained_len * inv_freq / (2 * math.pi)).clamp(max=1)     # fraction of the circle seen
partial = int((covered < 1).sum())
print(f"{partial} of {d // 2} pairs never complete a turn in {trained_len} tokens;")
print("the slowest sees", f"{covered[-1].item():.2%}", "of its circle")
print("at 4x the length it would reach", f"{4 * trained_len * inv_freq[-1].item():.3f}",
      "rad; training ended at", f"{trained_len * inv_freq[-1].item():.3f}")

# %% [markdown]
# MiniMind does not silently run past its limit: a sequence longer than `max_position_embeddings`
# is refused with a message that names the fix.

# %%
# NBVAL_CHECK_OUTPUT
with torch.device("meta"):
    short = MiniMindForCausalLM(MiniMindConfig.from_preset(preset, max_position_embeddings=64))
try:
    short(torch.zeros(1, 65, dtype=torch.long, device="meta"))
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## YaRN: slow the slow pairs, keep the fast ones
# To run at $s$ times the trained length, *position interpolation* divides every angle by $s$, so the
# new positions map onto angles seen in training. But it also squeezes the fast pairs, which then
# cannot tell neighbouring tokens apart as well as before. **YaRN** (Peng et al. 2023) treats the
# spectrum in three bands, measured by how many turns a pair makes in the trained context $L$:
#
# - pairs that turn more than `beta_fast` times are kept as trained (they saw every angle);
# - pairs that turn less than `beta_slow` times are interpolated: $\theta_i / s$;
# - pairs in between are blended with a linear ramp.
#
# MiniMind2's YaRN setting, read from MiniMind's own config class (its model file ships with the package,
# `minimind/use/minimind_code`), is printed below; `yarn_inv_freq` computes the new speeds from it.

# %%
# NBVAL_CHECK_OUTPUT
scaling = minimind_rope_scaling()  # MiniMindConfig(inference_rope_scaling=True).rope_scaling, in MiniMind's code
yarn_freq, attention_factor = yarn_inv_freq(d, theta, scaling["factor"], scaling["original_max_position_embeddings"],
                                            scaling["beta_fast"], scaling["beta_slow"], scaling["attention_factor"])
print("rope_scaling =", scaling)
ratio = yarn_freq / inv_freq                      # 1: kept, 1/s: interpolated
kept, squeezed = int((ratio > 0.999).sum()), int((ratio < 1 / scaling["factor"] + 1e-6).sum())
print(f"YaRN x{scaling['factor']:g}: {kept} pairs kept, {d // 2 - kept - squeezed} ramped, {squeezed} interpolated")
print("ratio yarn/rope per pair:", " ".join(f"{r:.4f}" for r in ratio.tolist()))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax1.semilogy(inv_freq, "o-", ms=3, label="RoPE")
ax1.semilogy(yarn_freq, "s-", ms=3, label=f"YaRN x{scaling['factor']:g}")
ax1.semilogy(inv_freq / scaling["factor"], ":", color="gray", label="interpolate all (PI)")
ax1.set(title="theta_i, radians per token", xlabel="channel pair i", ylabel="theta_i")
ax1.legend()
ax2.plot(ratio, "o-", ms=3, color="C1")
ax2.axhline(1 / scaling["factor"], color="gray", ls=":")
ax2.set(title="YaRN / RoPE: 1 = kept, 1/s = interpolated", xlabel="channel pair i", ylabel="ratio", ylim=(0, 1.05))
for x_, label in ((kept - 0.5, "kept | ramp"), (d // 2 - squeezed - 0.5, "ramp | interpolated")):
    ax2.axvline(x_, color="C3", ls="--", lw=0.8)
    ax2.text(x_, 0.5, label, rotation=90, ha="right", va="center", fontsize=8, color="C3")
plt.tight_layout()
plt.show()

# %% [markdown]
# Does it work? Over $s$ times the trained length, the interpolated pairs reach no further around their
# circle than RoPE's pairs did in training, while the fastest pair still turns as far between two
# neighbouring tokens as it did before (position interpolation would have cut that by $s$):

# %%
# NBVAL_CHECK_OUTPUT
long_len = int(scaling["factor"] * trained_len)
slow = ratio < 1 / scaling["factor"] + 1e-6
print(f"interpolated pairs over {long_len} tokens stay within the trained angles:",
      bool((long_len * yarn_freq[slow] <= trained_len * inv_freq[slow] * (1 + 1e-5)).all()))
print(f"fastest pair, angle between neighbours: RoPE {inv_freq[0].item():.3f}, YaRN {yarn_freq[0].item():.3f},"
      f" PI {inv_freq[0].item() / scaling['factor']:.4f} rad")

# %% [markdown]
# ## The attention factor
# Interpolation crowds positions together, which makes attention distributions flatter (more spread
# out) on long inputs. The YaRN paper compensates with a temperature: cos and sin are multiplied by
# $0.1 \ln s + 1$, so both query and key grow by that factor and every score by its square, sharpening
# the softmax again. MiniMind does not: its setting above says `attention_factor: 1.0`, so its long
# contexts get YaRN's frequencies and no sharpening. Our `yarn_inv_freq` (like transformers') takes the
# factor a config names and falls back to the paper's only when it names none. Both, through our model:

# %%
# NBVAL_CHECK_OUTPUT
paper = {k: v for k, v in scaling.items() if k != "attention_factor"}  # no factor named: the paper's
for name, setting in (("MiniMind2", scaling), ("the YaRN paper", paper)):
    long_cfg = MiniMindConfig.from_preset(preset, rope_scaling=setting, max_position_embeddings=long_len)
    with torch.device("meta"):
        long_model = MiniMindForCausalLM(long_cfg)
    print(f"{name:15}: attention_factor {long_model.model.attention_factor:.4f}, YaRN's frequencies: "
          f"{torch.equal(inv_freq_for(long_cfg)[0], yarn_freq)}")
paper_factor = inv_freq_for(long_cfg)[1]
print(f"the paper's factor is 0.1 ln {scaling['factor']:g} + 1 = {0.1 * math.log(scaling['factor']) + 1:.4f}")
S_yarn = rope_scores(qv, kv, torch.arange(32), yarn_freq, paper_factor)
print(f"with it, scores scale by attention_factor^2 = {paper_factor ** 2:.4f}:",
      torch.allclose(S_yarn, rope_scores(qv, kv, torch.arange(32), yarn_freq) * paper_factor ** 2, atol=1e-4))

# %% [markdown]
# ## Explore
# Pick a position and a channel pair. On the left, the pair's vector (starting at angle 0) after
# rotation to that position, with the positions before it as a trail; on the right, the cosine of every
# pair at that position. The static picture is the default; in a live notebook the sliders redraw it.

# %%
def show_rotation(position=12, pair=2):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
    angles = torch.arange(position + 1) * inv_freq[pair]
    ax1.add_patch(plt.Circle((0, 0), 1, fill=False, color="lightgray"))
    ax1.scatter(angles.cos(), angles.sin(), c=range(position + 1), cmap="viridis", s=12)
    ax1.annotate("", xy=(angles[-1].cos(), angles[-1].sin()), xytext=(0, 0), arrowprops={"arrowstyle": "->"})
    ax1.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal",
            title=f"pair {pair} at position {position}: {angles[-1].item() % (2 * math.pi):.2f} rad")
    ax2.bar(range(d // 2), torch.cos(position * inv_freq), color=["C3" if i == pair else "C0" for i in range(d // 2)])
    ax2.set(title=f"cos(m theta_i) at m = {position}", xlabel="channel pair i", ylim=(-1.05, 1.05))
    plt.tight_layout()
    plt.show()

show_rotation()  # the static picture (the book and nbval do not run widgets)
widgets.interact(show_rotation, position=widgets.IntSlider(value=12, min=0, max=trained_len),
                 pair=widgets.IntSlider(value=2, min=0, max=d // 2 - 1));

# %% [markdown]
# ## Summary
# - RoPE rotates each pair of query/key channels by position times a per-pair speed; lengths are kept.
# - The score between two tokens depends only on their distance, checked above to float precision.
# - Speeds form a geometric spectrum: fast pairs resolve neighbours, slow pairs carry long range.
# - Past the trained length the slow pairs meet unseen angles; YaRN interpolates those, keeps the fast
#   ones and ramps in between. The paper also scales the scores by the square of an attention factor;
#   MiniMind sets that factor to 1.
#
# Next, chapter 05 assembles attention, RoPE, RMSNorm and SwiGLU into the whole MiniMind model.

# %%
record(run_dir, "04_rope", channel_pairs=d // 2, pairs_without_full_turn=partial,
       relative_property_spread=float(f"{spread:.2e}"), yarn_factor=scaling["factor"],
       yarn_pairs_kept=kept, yarn_pairs_interpolated=squeezed, attention_factor=round(attention_factor, 4),
       attention_factor_paper=round(paper_factor, 4))

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. The rotation (implement).** Write `rope(x, positions, theta)` for x of shape (T, d): channel $i$ pairs
# with channel $i + d/2$, and the pair turns by the angle $m \cdot \theta^{-2i/d}$ at position $m$. The check
# compares it with `apply_rope`, and tells you if you paired adjacent channels (GPT-J's layout, not Llama's).

# %%
def rope(x, positions, theta):
    ...  # your code: (T, d)


check("04.rope", rope)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def rope(x, positions, theta):
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d, 2).float() / d)  # (d/2,): one speed per pair
    angle = positions.float()[:, None] * freq              # (T, d/2)
    cos, sin = angle.cos(), angle.sin()
    a, b = x[:, : d // 2], x[:, d // 2:]                    # the two halves of each pair
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


assert check("04.rope", rope)

# %% [markdown]
# **2. Only the distance (predict).** Rotate a query at position 5 and a key at position 3, and take their
# dot product; then the same two vectors at positions 105 and 103. Are the two scores equal or different?
# Answer "equal" or "different"; the check computes both.

# %%
scores_are = None  # "equal" or "different"
check("04.relative", scores_are)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: both pairs are 2 positions apart, and a rotation by m and one by n leave only m - n in the score
scores_are = "equal"
assert check("04.relative", scores_are)

# %% [markdown]
# **3. The slowest pair (compute).** How many tokens does the slowest pair of the tiny preset's RoPE take to
# turn one full circle? (Its head width and theta are in `MiniMindConfig.from_preset("tiny")`.) Compare it
# with the 1,024 positions the tiny model is built for.

# %%
slowest_turn = None  # tokens
check("04.longest_wavelength", slowest_turn)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
tiny = MiniMindConfig.from_preset("tiny")
slowest = tiny.rope_theta ** (-(tiny.head_dim - 2) / tiny.head_dim)  # the last pair's angle per position
slowest_turn = 2 * math.pi / slowest
print(f"{slowest_turn:,.0f} tokens: far more than {tiny.max_position_embeddings:,}, so it never completes a turn")
assert check("04.longest_wavelength", slowest_turn)
