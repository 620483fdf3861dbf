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
# # 06 · Mixture of experts
#
# A dense model runs every parameter on every token. A **mixture of experts** (MoE) replaces the
# feed-forward network of each block with several of them, the *experts*, and a small *router* that
# sends each token to only a few. The model can then hold many more parameters than one token pays for.
# MiniMind2-MoE has one **shared** expert that every token uses and four **routed** experts, of which
# each token uses two (top-2).
#
# This chapter takes the MoE layer (`minimind.model.moe.MoEFeedForward`) apart: the router, the shared
# expert, how tokens are dispatched, the load-balancing loss that keeps the router honest, what it
# costs, a picture of the routing in a small trained model, and the export to transformers'
# `Qwen2MoeForCausalLM`. The models here are toys (a few seconds of CPU each, whatever the preset); the
# parameter counts are those of the real presets.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's published datasets)
device = "auto"        # auto | cpu | cuda | mps
out_dir = None         # where this run writes; None means runs/<preset>

# %%
import math
import os
import tempfile

import matplotlib.pyplot as plt
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM, PRESETS
from minimind.course import record, runs_dir
from minimind.course.anatomy import (active_parameters, balance_bias, balance_demo, choose_experts, expert_load,
                                     parameter_breakdown, plot_balance, plot_routing, route, router_logits,
                                     toy_text)
from minimind.model.moe import MoEFeedForward, load_balancing_loss

run_dir = runs_dir(preset, out_dir)
torch.set_num_threads(1)  # the toy models' matrices are so small that extra threads cost more than they save
# a toy MoE shaped like MiniMind2-MoE (1 shared + 4 routed experts, top-2), small enough for a CPU
toy = MiniMindConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256, use_moe=True,
                     n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)
print(f"toy MoE: {toy.n_shared_experts} shared + {toy.n_routed_experts} routed experts, "
      f"top-{toy.num_experts_per_tok}, aux_loss_alpha {toy.aux_loss_alpha}")

# %% [markdown]
# ## The router
# The router is one linear layer, `gate`, from the hidden size to the number of routed experts. For a
# token $x$ it gives one logit per expert; a softmax turns them into probabilities $p$; the token goes
# to the $k$ experts with the highest $p$, and their outputs are mixed with the weights
# $w_i = p_i / \sum_{j \in \text{top-}k} p_j$ (renormalised to sum to 1, `norm_topk_prob`).
#
# Below, by hand for six tokens, and compared with the layer's own `route`. (A fresh router's weights
# are as small as every other layer's, `initializer_range`, and it is almost uniform; we draw them
# larger to get the sharper preferences of a trained one.)

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
layer = MoEFeedForward(toy)
with torch.no_grad():
    layer.gate.weight.normal_(0, 0.3)
x = torch.randn(6, toy.hidden_size)                      # six tokens
with torch.no_grad():
    probs = torch.softmax(layer.gate(x), dim=-1)         # (tokens, experts)
    top_p, top_i = probs.topk(2, dim=-1)                 # the two best experts of each token
    weights = top_p / top_p.sum(-1, keepdim=True)        # renormalised
    ref_probs, ref_weights, ref_idx = layer.route(x)
for t in range(6):
    print(f"token {t}: p = {[round(v, 2) for v in probs[t].tolist()]}  ->  experts {top_i[t].tolist()} "
          f"with weights {[round(v, 2) for v in weights[t].tolist()]}")
print("same as MoEFeedForward.route:", torch.equal(top_i, ref_idx) and torch.allclose(weights, ref_weights))

# %% [markdown]
# ## The shared expert, and dispatch by expert
# The layer's output for a token is its shared expert's output plus the weighted outputs of its two
# routed experts:
#
# $$y = S(x) + \sum_{i \in \text{top-}k(x)} w_i\, E_i(x).$$
#
# The shared expert learns what every token needs (common knowledge), which frees the routed experts
# to specialise (DeepSeekMoE's argument, which MiniMind follows).
#
# Computed token by token, that would be many tiny matrix multiplies. `MoEFeedForward` instead
# *dispatches by expert*: it sorts the (token, expert) assignments by expert, runs each expert once on
# the batch of tokens routed to it, and adds the weighted results back at their tokens' rows
# (`index_add_`). The cell shows which tokens each expert receives and checks the fast path against
# the formula.

# %%
# NBVAL_CHECK_OUTPUT
for e in range(toy.n_routed_experts):
    tokens = sorted(t for t in range(6) if e in top_i[t].tolist())
    print(f"expert {e} runs once, on tokens {tokens}")
with torch.no_grad():
    fast = layer(x[None])[0]
    formula = torch.stack([layer.shared_experts[0](x[t]) + sum(w * layer.experts[e](x[t])
                                                               for w, e in zip(weights[t], top_i[t].tolist()))
                           for t in range(6)])
print("dispatch by expert equals the formula:", torch.allclose(fast, formula, atol=1e-6))

# %% [markdown]
# ## The load-balancing loss
# Left alone, a router can collapse: the experts it happens to prefer early are trained more, get
# better, and are preferred even more, while the others starve. MiniMind adds an auxiliary loss per
# sequence of $T$ tokens (Switch Transformer's, at sequence level):
#
# $$\mathcal{L}_\text{aux} = \alpha \sum_{i=1}^{n} f_i\, P_i, \qquad
# f_i = \frac{n}{kT}\,\#\{\text{assignments to expert } i\}, \qquad
# P_i = \frac{1}{T}\sum_t p_i(x_t).$$
#
# $f_i$ is expert $i$'s share of the work, scaled so that a perfectly balanced expert has $f_i = 1$;
# $P_i$ is its mean router probability. The counts $f_i$ have no gradient, but $P_i$ does, so the loss
# pushes down the probabilities of the experts that are overloaded. Its values are easy to pin down:
# a uniform router ($P_i = 1/n$) costs exactly $\alpha$ whatever it picks, and a router collapsed onto
# the same $k$ experts for every token costs $\alpha\, n / k$.

# %%
# NBVAL_CHECK_OUTPUT
n, k, alpha, T = toy.n_routed_experts, toy.num_experts_per_tok, toy.aux_loss_alpha, 16
torch.manual_seed(0)
uniform = load_balancing_loss(torch.full((1, T, n), 1 / n), torch.randint(0, n, (1, T, k)), n, alpha)
collapsed_p = torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(1, T, n)
collapsed = load_balancing_loss(collapsed_p, torch.tensor([0, 1]).expand(1, T, k), n, alpha)
random_p = torch.softmax(2 * torch.randn(1, T, n), -1)
random_router = load_balancing_loss(random_p, random_p.topk(k, -1).indices, n, alpha)
print(f"uniform router     {uniform.item():.4f}   (alpha = {alpha})")
print(f"collapsed router   {collapsed.item():.4f}   (alpha * n / k = {alpha * n / k})")
print(f"a random router    {random_router.item():.4f}   (in between)")

# %% [markdown]
# ## What it costs: total and active parameters
# Memory holds every expert; compute only touches the experts a token is routed to. So an MoE model
# has two sizes: its **total** parameters, and the **active** parameters that one token uses (all of
# them except the routed experts it skips). Both are computed from the model built on the `meta` device.

# %%
# NBVAL_CHECK_OUTPUT
names = list(dict.fromkeys(["minimind2-small", "minimind2", "minimind2-moe", preset]))
print(f"{'preset':16s} {'total':>9s} {'routed experts':>15s} {'active':>9s} {'active share':>13s}")
for name in names:
    c = MiniMindConfig.from_preset(name)
    parts = parameter_breakdown(c)
    total, active = sum(parts.values()), active_parameters(c)
    print(f"{name:16s} {total / 1e6:8.1f}M {parts.get('routed experts', 0) / 1e6:14.1f}M "
          f"{active / 1e6:8.1f}M {100 * active / total:12.0f}%")

# %% [markdown]
# MiniMind2-MoE holds more parameters than the dense MiniMind2, yet each token runs through fewer of
# them: it pays for roughly the compute of a smaller dense model and gets the capacity of a larger one.
# The price is memory (all experts must be loaded), routing overhead, and a router that must be kept
# balanced, which is what the next experiment shows.
#
# ## Balancing in action
# One MoE layer learns to imitate a fixed random function. Its inputs share a common direction (the
# hidden states of real models do: they have a large mean), and the router starts pointing along it, so
# at step 1 every token goes to the same two experts. We train it three times: without the balancing
# loss, with MiniMind's $\alpha = 0.01$, and with $\alpha = 0.1$.

# %%
runs = [balance_demo(a, steps=80) for a in (0.0, 0.01, 0.1)]
for r in runs:
    print(f"alpha {r['alpha']:<5g} load at step 1 {[round(v, 2) for v in r['load'][0].tolist()]}, "
          f"at step 80 {[round(v, 2) for v in r['load'][-1].tolist()]}, task loss {r['loss'][-1]:.3f}")
fig = plot_balance(runs)
fig.savefig(run_dir / "06_balance.png", dpi=100)
plt.show()

# %% [markdown]
# Without the auxiliary loss the router never recovers, and not for lack of time: with renormalised
# top-$k$ weights, the task loss depends only on the logits of the experts a token *was* sent to, so it
# gives the unchosen experts no gradient at all. Nothing tells the router that experts 2 and 3 exist.
# The balancing loss does: it lowers the probability of the overloaded experts until others win some
# tokens. A larger $\alpha$ balances faster but weighs more against the task; MiniMind's small default
# does its work over a real training run's thousands of steps.
#
# ## Routing a sentence
# Now a whole MoE language model, the toy configuration above, trained for a few seconds on a tiny
# synthetic corpus of two kinds of text, words and sums, read byte by byte (a byte-level vocabulary of
# 128: no tokenizer needed). In training mode `loss` already includes the balancing loss.

# %%
text = toy_text(2000, seed=0)
stream = torch.tensor(list(text.encode()))
print(text[:120], "...")
torch.manual_seed(0)
toy_lm = MiniMindForCausalLM(toy).train()
opt = torch.optim.AdamW(toy_lm.parameters(), lr=3e-3)
g = torch.Generator().manual_seed(0)
for step in range(80):
    starts = torch.randint(0, len(stream) - 65, (16,), generator=g)
    batch = torch.stack([stream[s:s + 64] for s in starts])
    out = toy_lm(batch, labels=batch)             # cross-entropy + load-balancing loss
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
toy_lm.eval()
print(f"after 80 steps: cross-entropy {out.loss.item() - out.aux_loss.item():.2f} "
      f"(ln 128 = {math.log(128):.2f} at the start)")
print("balancing loss per layer:", [round(layer.mlp.aux_loss.item(), 4) for layer in toy_lm.model.layers],
      f"(alpha = {toy.aux_loss_alpha} when balanced)")

# %% [markdown]
# For each byte of a sentence, the heatmap shows the router's probabilities over the four experts in
# each layer; white boxes mark the two experts the byte goes to. On the right, each expert's share of
# the sentence's assignments (the dashed line is perfect balance). After so little training, look for
# the router treating the two kinds of text differently, letters versus digits and `+`/`=`, rather than
# for meaningful experts.

# %%
sentence = "anna sees two owls. 12+7=19."
ids = torch.tensor([list(sentence.encode())])
logits = router_logits(toy_lm, ids)               # one (tokens, experts) tensor per MoE layer
fig, axes = plt.subplots(len(logits), 2, figsize=(12, 3.0 * len(logits)), gridspec_kw={"width_ratios": [4, 1]})
for i, lg in enumerate(logits):
    p, _, idx = route(lg, toy.num_experts_per_tok)
    plot_routing(p, idx, list(sentence), axes=axes[i], title=f"layer {i}: router probabilities")
fig.savefig(run_dir / "06_routing.png", dpi=100)
plt.show()

# %% [markdown]
# ## What evens the load, and what does not
# A tempting knob is a **temperature**: divide the logits by $T$ before the softmax. It flattens ($T > 1$) or
# sharpens ($T < 1$) the probabilities, but dividing by a positive number keeps their order, so top-$k$ picks
# the same experts at every temperature: only the mixing weights change, and the load cannot move. Three
# things do move it. The **balancing loss** above changes the router's weights as it trains. **Noise** added
# to the logits before top-$k$ (noisy top-$k$ gating, Shazeer et al. 2017) lets a close runner-up win now and
# then. A **bias per expert**, added to the logits for the choice only and never to the weights, is
# DeepSeek-V3's *auxiliary-loss-free* balancing: after each step an overloaded expert's bias goes down a
# little and an underloaded one's up (`balance_bias`), with no term in the loss at all. On the router of the
# balancing experiment trained without the balancing loss ($\alpha = 0$, its last batch of tokens):

# %%
# NBVAL_CHECK_OUTPUT
collapsed, k, n = runs[0]["logits"], 2, runs[0]["load"].shape[1]
rate = 0.2  # the bias step (DeepSeek-V3: 0.001, over thousands of training steps)
share = {f"temperature {T:g}": expert_load(choose_experts(collapsed, k, temperature=T)[1], n) for T in (0.1, 1, 10)}
same = all(torch.equal(choose_experts(collapsed, k, temperature=T)[1], choose_experts(collapsed, k)[1])
           for T in (0.1, 10))
share["noise std 3"] = expert_load(choose_experts(collapsed, k, noise=3.0)[1], n)
bias = balance_bias(collapsed, k, steps=30, rate=rate)
share["bias, 30 steps"] = expert_load(choose_experts(collapsed, k, bias=bias)[1], n)
print(f"{len(collapsed)} tokens, top-{k}  " + " ".join(f"expert {e}" for e in range(n)) + "   largest / balanced")
for name, load in share.items():
    print(f"{name:18} " + " ".join(f"{100 * v:7.0f}%" for v in load.tolist()) + f"   {load.max().item() * n:8.2f}")
print("the same experts chosen for every token at temperatures 0.1, 1 and 10:", same)
print("the bias after 30 steps:", [round(b, 2) for b in bias.tolist()])
top = collapsed.sort(dim=-1, descending=True).values  # (tokens, n)
print(f"each token's 2nd logit above its 3rd by {(top[:, 1] - top[:, 2]).min():.1f} to "
      f"{(top[:, 1] - top[:, 2]).max():.1f} (median {(top[:, 1] - top[:, 2]).median():.1f})")

# %% [markdown]
# The temperature leaves every choice where it was. Noise must be about as large as the gap between a
# token's second and third logit before it moves anything, and then it moves tokens at random, whatever the
# token. The bias moves the choice where the runners-up came closest, and needs no gradient: a router the task
# loss gives no signal about its unchosen experts (as above) still spreads its load. With a fixed step the
# bias does not settle exactly, it keeps overshooting by a step, so the load is near balance, not at it.
#
# **Explore.** The first 32 tokens of that batch: move the temperature and watch the heatmap's colours change
# while the white boxes and the load bars stay put; then add noise, or let the bias balance for a few steps,
# and watch the boxes move.

# %%
import ipywidgets as widgets


def show_routing(temperature=1.0, top_k=2, noise=0.0, bias_steps=0):
    lg = collapsed[:32]
    bias = balance_bias(lg, top_k, steps=bias_steps, rate=rate) if bias_steps else None
    p, idx = choose_experts(lg, top_k, temperature, bias=bias, noise=noise)
    plot_routing(p, idx, [str(i) for i in range(len(lg))],
                 title=f"temperature {temperature:g}, top-{top_k}, noise {noise:g}, bias after {bias_steps} steps")
    plt.show()


show_routing()  # the static picture (the book and nbval do not run widgets)
widgets.interact(show_routing, temperature=widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.1),
                 top_k=widgets.IntSlider(value=2, min=1, max=n),
                 noise=widgets.FloatSlider(value=0.0, min=0.0, max=10.0, step=0.5),
                 bias_steps=widgets.IntSlider(value=0, min=0, max=60, step=5));

# %% [markdown]
# ## The same model in transformers: Qwen2-MoE
# transformers has no MiniMind class, but `Qwen2MoeForCausalLM` has the same router (softmax, top-$k$,
# optional renormalisation) and routed experts. One difference: Qwen2-MoE *gates* its shared expert,
#
# $$y = \sum_{i \in \text{top-}k} w_i E_i(x) + \sigma(g \cdot x)\, S(x),$$
#
# while MiniMind adds $S(x)$ ungated. `minimind.use.export` bridges the gap without touching transformers:
# it sets the gate's weights $g$ to zero, so $\sigma(0) = 0.5$ for every token, and doubles the shared
# expert's `down_proj` (its last, linear step), so that $0.5 \cdot 2S(x) = S(x)$. Both factors are powers
# of two, so the floating-point results are exact, not approximately equal. (Several shared experts
# would be concatenated into one wider one, which computes the same sum.) Here the trained toy model
# goes through that export.

# %%
# NBVAL_CHECK_OUTPUT
import transformers
from safetensors.torch import load_file

from minimind.use.export import export_hf

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
batch = torch.stack([stream[s:s + 48] for s in (0, 1000, 2000)])
with tempfile.TemporaryDirectory() as tmp:
    export_hf(toy_lm, tmp)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()
    state = load_file(os.path.join(tmp, "model.safetensors"))
ours_down = toy_lm.model.layers[0].mlp.shared_experts[0].down_proj.weight
print("transformers class:", type(hf).__name__)
print("shared_expert_gate is all zeros:", bool((state["model.layers.0.mlp.shared_expert_gate.weight"] == 0).all()))
print("sigmoid(0) * 2 == 1 exactly:", (torch.sigmoid(torch.zeros(1)) * 2 == 1).item())
print("exported down_proj == 2 x ours:", torch.equal(state["model.layers.0.mlp.shared_expert.down_proj.weight"], 2 * ours_down))
with torch.no_grad():
    diff = (hf(batch).logits - toy_lm(batch).logits).abs().max().item()
print("max |logit difference| < 1e-4:", diff < 1e-4)

# %% [markdown]
# ## What this chapter measured

# %%
moe_cfg = MiniMindConfig.from_preset(preset if MiniMindConfig.from_preset(preset).use_moe else "minimind2-moe")
imbalance = {r["alpha"]: round(r["load"][-1].max().item() * toy.n_routed_experts, 2) for r in runs}
record(run_dir, "06_moe", moe_preset=moe_cfg.preset, total_params=sum(parameter_breakdown(moe_cfg).values()),
       active_params=active_parameters(moe_cfg), busiest_expert_vs_balanced_no_aux=imbalance[0.0],
       busiest_expert_vs_balanced_alpha_0_01=imbalance[0.01],
       busiest_expert_vs_balanced_alpha_0_1=imbalance[0.1],
       toy_cross_entropy=round(out.loss.item() - out.aux_loss.item(), 3),
       qwen2_moe_max_logit_diff=float(f"{diff:.2e}"))

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. Route (implement).** Write `top_k_route(logits, k)` for router logits (tokens, experts): each token's
# `k` experts and their weights, renormalised to sum to 1 over the chosen ones. Return `(weights, idx)`.

# %%
def top_k_route(logits, k):
    ...  # your code: (weights, idx), each (tokens, k)


check("06.route", top_k_route)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def top_k_route(logits, k):
    weights, idx = torch.softmax(logits, dim=-1).topk(k, dim=-1)  # (tokens, k) each
    return weights / weights.sum(-1, keepdim=True), idx


assert check("06.route", top_k_route)

# %% [markdown]
# **2. The balancing loss (implement).** Write `aux_loss(probs, idx, n, alpha)` for probabilities (B, T, n)
# and chosen experts (B, T, k): per sequence, $f_i$ is expert $i$'s share of the $kT$ picks times $n$ and
# $P_i$ its mean probability; the loss is $\alpha \sum_i f_i P_i$, averaged over the sequences. Before you run
# the check, predict: what does a router that gives every expert probability $1/n$ score?

# %%
def aux_loss(probs, idx, n, alpha):
    ...  # your code: a scalar


check("06.aux_loss", aux_loss)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def aux_loss(probs, idx, n, alpha):
    b, t, k = idx.shape
    picks = torch.nn.functional.one_hot(idx, n).float().sum(dim=(1, 2))  # (B, n): picks per expert
    f = picks / (k * t) * n                                              # 1 for every expert when even
    return alpha * (f * probs.mean(dim=1)).sum(-1).mean()                # uniform probabilities: alpha exactly


assert check("06.aux_loss", aux_loss)

# %% [markdown]
# **3. Temperature (predict).** Divide the router's logits by a temperature of 5 before the softmax. Does any
# token go to other experts? Answer "yes" or "no"; the check routes 50 tokens both ways. (The chapter's
# section "What evens the load, and what does not" says why.)

# %%
experts_change = None  # "yes" or "no"
check("06.temperature", experts_change)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: dividing by T > 0 keeps the logits' order, and top-k reads only the order
experts_change = "no"
assert check("06.temperature", experts_change)
