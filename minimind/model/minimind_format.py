"""MiniMind's own files as inputs: its transformers folders (config.json with its own keys, either generation)
and its `.pth` state dicts (often fp16), read without unpickling code (torch.load(weights_only=True)).

The weight names are already ours. What differs is the config: MiniMind2 (2025) and minimind-3 (2026) spell
some fields their own way and have different defaults, and a `.pth` has no config at all, so the shapes of
its tensors say what the model is.
"""
from __future__ import annotations

import math
from pathlib import Path

# keys that only MiniMind's (or transformers') config.json has: their presence says "not one of ours"
MINIMIND_MARKERS = {"auto_map", "transformers_version", "flash_attn", "hidden_act", "inference_rope_scaling",
                    "num_experts", "router_aux_loss_coef", "scoring_func", "seq_aux", "_name_or_path",
                    "torch_dtype", "dtype", "max_seq_len"}
# keys that mean the same in MiniMind's config and ours
SAME = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
        "dropout", "use_moe", "n_shared_experts", "num_experts_per_tok", "norm_topk_prob",
        "moe_intermediate_size", "bos_token_id", "eos_token_id")


def is_minimind_config(d: dict) -> bool:
    """A config.json written by MiniMind's code (or by transformers for it), not by this package."""
    return d.get("model_type", "minimind") == "minimind" and bool(MINIMIND_MARKERS & set(d))


def minimind3_width(hidden_size: int) -> int:
    """minimind-3's SwiGLU width: ceil(pi * hidden / 64) * 64 (2432 at 768)."""
    return math.ceil(hidden_size * math.pi / 64) * 64


def config_fields(d: dict, qk_norm: bool | None = None) -> dict:
    """MiniMindConfig's fields for a MiniMind config.json (MiniMindConfig.from_dict calls this).
    qk_norm: whether the weights have q_norm/k_norm (the surest sign of minimind-3); None guesses from the
    keys only minimind-3 writes."""
    if qk_norm is None:
        qk_norm = bool({"head_dim", "num_experts", "router_aux_loss_coef", "moe_intermediate_size"} & set(d))
    refused = []
    if d.get("hidden_act", "silu") != "silu":
        refused.append(f"hidden_act={d['hidden_act']!r} (only silu, SwiGLU's gate, is built)")
    if d.get("scoring_func", "softmax") != "softmax":
        refused.append(f"scoring_func={d['scoring_func']!r} (only a softmax router is built)")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if d.get(key):
            refused.append(f"{key}=true (not built here)")
    if refused:
        raise ValueError("this MiniMind config changes the model's maths in ways this package does not build: "
                         + "; ".join(refused))
    out = {k: d[k] for k in SAME if d.get(k) is not None}
    h = d.get("hidden_size", 768 if qk_norm else 512)
    out["hidden_size"] = h
    if qk_norm:  # minimind-3's defaults (its MiniMindConfig.__init__)
        out.setdefault("num_key_value_heads", 4)
        out.setdefault("intermediate_size", minimind3_width(h))
        out.setdefault("rms_norm_eps", 1e-6)
        out.setdefault("num_experts_per_tok", 1)
        out["qk_norm"] = True
        out["n_shared_experts"] = 0  # minimind-3's MoE has none
        if d.get("head_dim"):
            out["head_dim"] = d["head_dim"]
        if d.get("num_experts") is not None:
            out["n_routed_experts"] = d["num_experts"]
        if d.get("router_aux_loss_coef") is not None:
            out["aux_loss_alpha"] = d["router_aux_loss_coef"]
    else:  # MiniMind2's
        out.setdefault("num_key_value_heads", 2)
        out.setdefault("n_shared_experts", 1)
        out.setdefault("num_experts_per_tok", 2)
        for theirs, ours in (("n_routed_experts", "n_routed_experts"), ("aux_loss_alpha", "aux_loss_alpha")):
            if d.get(theirs) is not None:
                out[ours] = d[theirs]
        if out["num_experts_per_tok"] == 1:  # MiniMind2 renormalised the top-k weights only for k > 1
            out["norm_topk_prob"] = False
    out["rope_scaling"] = _rope_scaling(d)
    theta = (d.get("rope_parameters") or {}).get("rope_theta")  # transformers 5 may move it there
    if theta and "rope_theta" not in d:
        out["rope_theta"] = theta
    out["pad_token_id"] = d.get("pad_token_id") if d.get("pad_token_id") is not None else 0
    return out


def _rope_scaling(d: dict):
    scaling = d.get("rope_scaling")
    params = d.get("rope_parameters") or {}
    if not scaling and params.get("rope_type") not in (None, "default"):
        scaling = params
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "yarn":
        raise ValueError(f"rope_scaling type {kind!r}: only YaRN (or none) is built here")
    keep = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor")
    return {"rope_type": "yarn", **{k: scaling[k] for k in keep if scaling.get(k) is not None}}


# -- state dicts --------------------------------------------------------------------------------------------------
def read_torch_state(file) -> dict:
    """The tensors of a `.pth`/`.bin` state dict, through torch's weights-only loader (no code runs); a training
    checkpoint {"model": state, ...} gives its model. Prefixes from torch.compile/DDP are dropped."""
    import torch  # here, so that reading a config stays light
    file = Path(file)
    if not file.exists():
        raise FileNotFoundError(f"{file} not found")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code in it, a cut file, not a torch file at all
        raise ValueError(f"{file} is not a plain PyTorch state dict that loads with weights_only=True ({err}); "
                         "MiniMind's .pth files are; re-save it as {name: tensor}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{file} holds {type(obj).__name__}, not a state dict of tensors ({{name: tensor}})")
    return clean_state(obj)


def clean_state(state: dict) -> dict:
    """Names as our model has them: without torch.compile's `_orig_mod.` or DDP's `module.`; RoPE tables that
    some versions saved (they are recomputed) left out."""
    out = {}
    for name, tensor in state.items():
        for prefix in ("_orig_mod.", "module."):
            name = name.replace(prefix, "")
        if name.split(".")[-1] in ("freqs_cos", "freqs_sin", "inv_freq"):
            continue
        out[name] = tensor
    return out


def has_qk_norm(names) -> bool:
    return any(n.endswith("self_attn.q_norm.weight") for n in names)


def config_fields_from_state(state: dict, num_attention_heads: int = 8,
                             num_experts_per_tok: int | None = None) -> dict:
    """MiniMindConfig's fields for a MiniMind state dict, read from its shapes.

    The head count is not in the shapes unless q_norm is (its width is head_dim): without it, MiniMind's 8
    heads are assumed (every MiniMind model has 8). How many experts a token uses is not in the shapes
    either: MiniMind2's top-2 or minimind-3's top-1 unless num_experts_per_tok says otherwise.
    """
    def shape(name):
        if name not in state:
            raise ValueError(f"the state dict has no {name}: it does not look like a MiniMind model "
                             f"(first names: {sorted(state)[:5]})")
        return tuple(state[name].shape)

    vocab, hidden = shape("model.embed_tokens.weight")
    layers = 1 + max((int(n.split(".")[2]) for n in state if n.startswith("model.layers.")), default=-1)
    if layers == 0:
        raise ValueError("the state dict has no model.layers.N.* weights: it is not a MiniMind model")
    qk_norm = has_qk_norm(state)
    q_rows = shape("model.layers.0.self_attn.q_proj.weight")[0]
    k_rows = shape("model.layers.0.self_attn.k_proj.weight")[0]
    head_dim = shape("model.layers.0.self_attn.q_norm.weight")[0] if qk_norm else q_rows // num_attention_heads
    if q_rows % head_dim or k_rows % head_dim:
        raise ValueError(f"q_proj has {q_rows} rows and k_proj {k_rows}: they do not split into heads of "
                         f"{head_dim}; pass the model's head count (--heads) or its preset (--preset)")
    experts = 1 + max((int(n.split(".")[5]) for n in state if ".mlp.experts." in n), default=-1)
    shared = 1 + max((int(n.split(".")[5]) for n in state if ".mlp.shared_experts." in n), default=-1)
    use_moe = experts > 0
    mlp = "model.layers.0.mlp.experts.0.gate_proj.weight" if use_moe else "model.layers.0.mlp.gate_proj.weight"
    width = shape(mlp)[0]
    import torch
    tied = "lm_head.weight" not in state or torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    config = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=q_rows // head_dim, num_key_value_heads=k_rows // head_dim,
                  head_dim=head_dim, intermediate_size=width, tie_word_embeddings=tied,
                  rms_norm_eps=1e-6 if qk_norm else 1e-5, qk_norm=qk_norm)
    if use_moe:
        top_k = num_experts_per_tok or (1 if qk_norm else 2)
        config.update(use_moe=True, n_routed_experts=experts, n_shared_experts=shared, num_experts_per_tok=top_k,
                      moe_intermediate_size=width, aux_loss_alpha=5e-4 if qk_norm else 0.01,
                      norm_topk_prob=qk_norm or top_k > 1)
    return config
