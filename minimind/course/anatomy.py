"""Looking inside a model: parameter breakdowns (chapter 05; the model built on the `meta` device, no memory)
and router statistics (chapter 06)."""
from __future__ import annotations

import random
from typing import Optional

import torch
import torch.nn.functional as F

from ..model.config import MiniMindConfig
from ..model.moe import route  # noqa: F401  (chapter 06 calls it from here too)
from ..model.transformer import (
    MiniMindForCausalLM,
    active_parameters,  # noqa: F401  (and this)
)

# the order components are listed and stacked in
COMPONENTS = ("embedding", "attention", "MLP", "shared experts", "routed experts", "router", "norms",
              "output head")
COLORS = {"embedding": "#4C72B0", "attention": "#DD8452", "MLP": "#55A868", "shared experts": "#8172B3",
          "routed experts": "#64B5CD", "router": "#C44E52", "norms": "#937860", "output head": "#DA8BC3"}


def component_of(name: str) -> str:
    """Which part of the model a parameter name (transformers' Llama spelling) belongs to."""
    if name.startswith("model.embed_tokens."):
        return "embedding"
    if name.startswith("lm_head."):
        return "output head"  # only when the embeddings are untied (tied ones are counted once)
    if ".self_attn." in name:
        return "attention"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp.shared_experts." in name:
        return "shared experts"
    if ".mlp.experts." in name:
        return "routed experts"
    if ".mlp." in name:
        return "MLP"
    if "norm" in name:
        return "norms"
    raise ValueError(f"parameter {name!r} belongs to no known component")


def parameter_breakdown(config: MiniMindConfig) -> dict[str, int]:
    """{component: parameter count} in COMPONENTS order, zeros left out; sums to num_parameters()."""
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # a tied lm_head is the embedding: listed once
        counts[component_of(name)] += p.numel()
    return {k: v for k, v in counts.items() if v}


def scaled_config(preset: str, hidden_size: int, num_hidden_layers: int,
                  vocab_size: Optional[int] = None) -> MiniMindConfig:
    """A preset with another width and depth (for exploring sizes). The SwiGLU width follows the 8/3
    rule; the preset's head counts are kept where they divide the new width, otherwise heads of 64."""
    base = MiniMindConfig.from_preset(preset)
    heads = base.num_attention_heads if hidden_size % base.num_attention_heads == 0 else max(hidden_size // 64, 1)
    kv = base.num_key_value_heads if heads % base.num_key_value_heads == 0 else 1
    return MiniMindConfig.from_preset(preset, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                                      num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=None,
                                      vocab_size=vocab_size or base.vocab_size)


def generation_table(presets) -> list[dict]:
    """One row per preset: the shapes that differ between MiniMind2 and minimind-3, parameters (total and
    active) and the KV cache a token costs in bf16."""
    rows = []
    for name in presets:
        c = MiniMindConfig.from_preset(name)
        with torch.device("meta"):
            total = MiniMindForCausalLM(c).num_parameters()
        rows.append(dict(preset=name, params=total, active=active_parameters(c), hidden=c.hidden_size,
                         layers=c.num_hidden_layers, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                         head_dim=c.head_dim, ffn=c.moe_intermediate_size if c.use_moe else c.intermediate_size,
                         qk_norm=c.qk_norm, eps=c.rms_norm_eps,
                         kv_bytes_per_token=2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2,
                         moe=(f"{c.n_shared_experts}+{c.n_routed_experts}, top-{c.num_experts_per_tok}"
                              if c.use_moe else "-")))
    return rows


@torch.no_grad()
def attention_logit_growth(config: MiniMindConfig, scales, seq_len: int = 64, seed: int = 0) -> dict:
    """What q/k-norm does as weights grow: one attention layer of `config`, its q_proj and k_proj scaled by
    each factor in `scales`; returns the largest |q.k| / sqrt(d) and the mean attention entropy (nats) at
    each scale. Without q/k-norm the logits grow with the square of the scale and attention collapses onto
    one token; with it they do not move (RMSNorm ignores the scale of its input)."""
    from ..model.attention import Attention, repeat_kv
    from ..model.layers import RMSNorm
    from ..model.rope import inv_freq_for, rope_cos_sin
    torch.manual_seed(seed)
    attn = Attention(config)
    x = RMSNorm(config.hidden_size)(torch.randn(1, seq_len, config.hidden_size))  # (1, T, hidden), as a block sees it
    cos, sin = rope_cos_sin(inv_freq_for(config)[0], torch.arange(seq_len)[None])
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    q0, k0 = attn.q_proj.weight.clone(), attn.k_proj.weight.clone()
    out = {"scale": list(scales), "max_logit": [], "entropy": []}
    for s in scales:
        attn.q_proj.weight.copy_(q0 * s)
        attn.k_proj.weight.copy_(k0 * s)
        q, k = attn.project_qk(x, cos, sin)  # (1, H, T, d), (1, KV, T, d)
        k = repeat_kv(k, config.num_attention_heads // config.num_key_value_heads)
        logits = (q @ k.transpose(-2, -1) / config.head_dim ** 0.5).masked_fill(~causal, float("-inf"))
        p = logits.softmax(-1)                                       # (1, H, T, T)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean()     # mean over heads and queries
        out["max_logit"].append(logits[..., causal].abs().max().item())
        out["entropy"].append(entropy.item())
    return out


def plot_parameter_breakdown(breakdowns: dict[str, dict[str, int]], axes=None):
    """Stacked bars, one per model: millions of parameters (left) and each component's share (right)."""
    import matplotlib.pyplot as plt
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    fig = axes[0].figure
    names = list(breakdowns)
    present = [c for c in COMPONENTS if any(c in b for b in breakdowns.values())]
    for ax, share in zip(axes, (False, True)):
        bottom = [0.0] * len(names)
        for comp in present:
            vals = []
            for name in names:
                b = breakdowns[name]
                vals.append(b.get(comp, 0) / (sum(b.values()) / 100 if share else 1e6))
            ax.bar(names, vals, bottom=bottom, color=COLORS[comp], label=comp, edgecolor="white", linewidth=0.5)
            bottom = [b + v for b, v in zip(bottom, vals)]
        if not share:
            for i, total in enumerate(bottom):
                ax.text(i, total, f"{total:.1f}M", ha="center", va="bottom", fontsize=9)
            ax.set_ylim(0, max(bottom) * 1.12)
        ax.set_ylabel("share of parameters (%)" if share else "parameters (millions)")
        ax.tick_params(axis="x", labelrotation=15)
    axes[0].set_title("size")
    axes[1].set_title("where the parameters are")
    axes[1].set_ylim(0, 100)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


# -- mixture of experts (chapter 06) ----------------------------------------------------------------
def expert_load(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Each expert's share of all token-to-expert assignments (sums to 1; balanced: 1/n each)."""
    counts = torch.bincount(topk_idx.reshape(-1), minlength=n_experts).float()
    return counts / counts.sum()


def choose_experts(logits: torch.Tensor, top_k: int, temperature: float = 1.0, bias=None, noise: float = 0.0,
                   seed: int = 0):
    """Routing with the two knobs that do move the load: the experts are the top-k of logits + bias (+ noise
    of std `noise`, as in noisy top-k gating), while the probabilities (tokens, n) that weigh them are
    softmax(logits / temperature), untouched by the bias (as in DeepSeek-V3's auxiliary-loss-free balancing).
    Returns (probs, idx (tokens, k))."""
    scores = logits + (0 if bias is None else bias)  # (tokens, n)
    if noise:
        scores = scores + noise * torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
    idx = scores.topk(top_k, dim=-1).indices  # (tokens, k)
    return F.softmax(logits.float() / temperature, dim=-1), idx


def balance_bias(logits: torch.Tensor, top_k: int, steps: int = 30, rate: float = 0.05) -> torch.Tensor:
    """Auxiliary-loss-free balancing on fixed logits: after each step every overloaded expert's bias goes
    down by `rate`, every underloaded one's up. The bias (n,) after `steps` steps."""
    n = logits.shape[-1]
    bias = torch.zeros(n)
    for _ in range(steps):
        _, idx = choose_experts(logits, top_k, bias=bias)
        bias = bias + rate * torch.sign(1 / n - expert_load(idx, n))
    return bias


@torch.no_grad()
def router_logits(model: MiniMindForCausalLM, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """The router logits (batch * seq, n_experts) of every MoE layer for one forward pass."""
    from ..model.moe import MoEFeedForward
    found, hooks = [], []
    for layer in model.model.layers:
        if isinstance(layer.mlp, MoEFeedForward):
            hooks.append(layer.mlp.register_forward_pre_hook(
                lambda mod, args: found.append(mod.gate(args[0].reshape(-1, args[0].shape[-1])).float())))
    was_training = model.training
    model.eval()
    try:
        model(input_ids)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def plot_routing(probs: torch.Tensor, idx: torch.Tensor, labels: list[str], axes=None, title: str = ""):
    """Heatmap of router probabilities (token x expert) with the chosen experts outlined, and the
    expert load histogram beside it."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    probs, idx = probs.detach().cpu(), idx.detach().cpu()
    t, n = probs.shape
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [4, 1]})
    fig = axes[0].figure
    ax = axes[0]
    im = ax.imshow(probs.T.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for pos in range(t):
        for e in idx[pos].tolist():
            ax.add_patch(Rectangle((pos - 0.5, e - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.5))
    ax.set_xticks(range(t), [repr(s)[1:-1] if s.strip() else "␣" for s in labels], fontsize=9)
    ax.set_yticks(range(n), [f"expert {e}" for e in range(n)])
    ax.set_title(title or "router probabilities (white boxes: the experts each token goes to)")
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    load = expert_load(idx, n)
    axes[1].bar(range(n), load.numpy() * 100, color="#64B5CD")
    axes[1].axhline(100 / n, color="black", linestyle="--", linewidth=1, label="balanced")
    axes[1].set_xticks(range(n))
    axes[1].set_xlabel("expert")
    axes[1].set_ylabel("share of assignments (%)")
    axes[1].set_ylim(0, 100 * min(1.0, idx.shape[-1] / n) * 1.15 + 5)
    axes[1].legend(fontsize=8, frameon=False)
    axes[1].set_title("load")
    fig.tight_layout()
    return fig


def balance_demo(alpha: float, steps: int = 80, n_experts: int = 4, top_k: int = 2, hidden: int = 32,
                 tokens: int = 256, offset: float = 3.0, lr: float = 1e-2, seed: int = 0) -> dict:
    """Train one MoE layer to imitate a fixed random function from a collapsed router, with balancing weight
    `alpha` (0: none). Returns {"load": (steps, n_experts), "loss": [steps], "alpha", "logits": the router's
    logits (tokens, n_experts) for the last batch}."""
    from ..model.moe import MoEFeedForward
    g = torch.Generator().manual_seed(seed)
    config = MiniMindConfig(hidden_size=hidden, num_attention_heads=1, num_key_value_heads=1,
                            intermediate_size=2 * hidden, use_moe=True, n_routed_experts=n_experts,
                            n_shared_experts=1, num_experts_per_tok=top_k, aux_loss_alpha=alpha)
    torch.manual_seed(seed)
    layer = MoEFeedForward(config)
    common = torch.randn(hidden, generator=g)
    common = offset * common / common.norm() * hidden ** 0.5
    teacher = [torch.randn(hidden, 4 * hidden, generator=g) / hidden ** 0.5,
               torch.randn(4 * hidden, hidden, generator=g) / (4 * hidden) ** 0.5]
    with torch.no_grad():  # a router that points along the common direction: one expert pair wins everywhere
        layer.gate.weight.copy_(torch.randn(n_experts, hidden, generator=g) * 0.1 + torch.outer(
            torch.linspace(1, -1, n_experts), common / common.norm() * 0.25))
    opt = torch.optim.AdamW(layer.parameters(), lr=lr)
    loads, losses = [], []
    for _ in range(steps):
        x = torch.randn(1, tokens, hidden, generator=g) + common  # (1, T, C), sharing a large mean
        target = torch.tanh(x @ teacher[0]) @ teacher[1]  # (1, T, C)
        out = layer(x)  # (1, T, C)
        task = F.mse_loss(out, target)
        (task + layer.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loads.append(expert_load(layer.last_topk_idx, n_experts))
        losses.append(task.item())
    with torch.no_grad():
        logits = layer.gate(x[0]).float()  # (T, n_experts)
    return {"load": torch.stack(loads), "loss": losses, "alpha": alpha, "logits": logits}


def plot_balance(runs: list[dict], axes=None):
    """Each expert's share of the assignments over training, one panel per run of balance_demo."""
    import matplotlib.pyplot as plt
    if axes is None:
        fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.2), sharey=True)
    fig = axes[0].figure
    for ax, run in zip(axes, runs):
        load = run["load"] * 100
        steps = range(1, load.shape[0] + 1)
        ax.stackplot(steps, load.T.numpy(), labels=[f"expert {e}" for e in range(load.shape[1])],
                     colors=plt.cm.tab10.colors[:load.shape[1]], alpha=0.85)
        for level in range(1, load.shape[1]):
            ax.axhline(100 * level / load.shape[1], color="white", linestyle=":", linewidth=1)
        ax.set_xlim(1, load.shape[0])
        ax.set_ylim(0, 100)
        ax.set_xlabel("training step")
        ax.set_title("without the balancing loss" if run["alpha"] == 0 else
                     f"with the balancing loss (alpha={run['alpha']:g})")
    axes[0].set_ylabel("share of assignments (%)")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def toy_text(n_sentences: int = 2000, seed: int = 0) -> str:
    """A tiny synthetic corpus of two kinds of text, words and sums ("ben likes two owls. 12+7=19."),
    for byte-level toy models that learn something in a few seconds."""
    rng = random.Random(seed)
    names, verbs = ["anna", "ben", "cleo", "dan", "eve"], ["sees", "likes", "finds", "draws"]
    things = ["a cat", "the sea", "two owls", "a red box", "the moon", "three hats"]
    out = []
    for _ in range(n_sentences):
        if rng.random() < 0.5:
            out.append(f"{rng.choice(names)} {rng.choice(verbs)} {rng.choice(things)}.")
        else:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            out.append(f"{a}+{b}={a + b}.")
    return " ".join(out)
