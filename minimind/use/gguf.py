"""Export a checkpoint to one GGUF file (llama.cpp, ollama), with the tokenizer as GPT-2 byte-level BPE and the
chat template. Each model is written in a llama.cpp architecture whose graph computes it exactly:

MiniMind2 generation (no q/k-norm) -> llama.cpp's `llama`: its RoPE turns neighbour channels (2i, 2i+1), ours
rotate_half pairs (i, i + d/2), so q/k rows are permuted per head.
minimind-3 generation (q/k-norm) -> llama.cpp's `qwen3`, as convert_hf_to_gguf.py writes a Qwen3ForCausalLM: NEOX
RoPE is our rotate_half (no permutation), plus blk.N.attn_q_norm / attn_k_norm and attention.key_length = head_dim.

MoE (checked against llama.cpp's src/models/*.cpp and build_moe_ffn in src/llama-graph.cpp): every MoE layer of
ours is softmax(router) -> top-k -> optional renormalisation -> sum of weighted SwiGLU experts, plus ungated shared
experts. The expert weights are stacked into blk.N.ffn_{gate,up,down}_exps (n_expert, out, in).
MiniMind2-MoE -> `bailingmoe` (Ling v1): softmax gating, expert_weights_norm = norm_topk_prob, ungated shared
experts (several side by side), "normal" RoPE (q/k rows permuted as for `llama`); it needs an output.weight, so a
tied embedding is written twice. (`qwen2moe` gates its shared expert with a sigmoid and never renormalises,
`deepseek` never renormalises, `llama` (Mixtral) has no shared expert.)
minimind-3-moe -> `qwen3moe`: softmax gating, always renormalised top-k, no shared expert, q/k-norm, NEOX RoPE.
Other q/k-norm MoE models (shared experts, or no renormalisation) -> `glm4moe`: q/k-norm, NEOX RoPE,
expert_gating_func = softmax, expert_weights_norm, ungated shared experts, the FFN norm named
post_attention_norm and a zero exp_probs_b (the expert-selection bias, added to the probabilities only to choose).
An MoE model without shared experts in `bailingmoe` or `glm4moe` gets one zero shared expert (it adds exactly 0):
both graphs always run one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection from rotate_half pairs (i, i + d/2) to neighbours (2i, 2i+1)."""
    # (nh * hs, C) -> (nh, 2, hs / 2, C) -> (nh, hs / 2, 2, C) -> (nh * hs, C): row i + hs/2 lands after row i
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_arch(config) -> str:
    """The llama.cpp architecture that computes this config exactly (see the module's docstring)."""
    if not config.use_moe:
        return "qwen3" if config.qk_norm else "llama"
    if not config.qk_norm:
        return "bailingmoe"
    return "qwen3moe" if config.norm_topk_prob and not config.n_shared_experts else "glm4moe"


# llama.cpp's `llama` and `bailingmoe` RoPE turns neighbour pairs; the others turn (i, i + d/2) as we do
NORMAL_ROPE = ("llama", "bailingmoe")


def gguf_tensors(model, dtype: str = "f32") -> dict[str, np.ndarray]:
    """{llama.cpp name: numpy array} for a MiniMind model, in the layout of `gguf_arch(model.config)` (norms, the
    router and the selection bias stay float32)."""
    config = model.config
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype {dtype!r}: use f32 or f16")
    arch = gguf_arch(config)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    big = np.float16 if dtype == "f16" else np.float32

    def mat(x):
        return np.ascontiguousarray(x.astype(big))

    def f32(x):
        return np.ascontiguousarray(x.astype(np.float32))

    out = {"token_embd.weight": mat(state["model.embed_tokens.weight"]),
           "output_norm.weight": f32(state["model.norm.weight"])}
    if not config.tie_word_embeddings or arch == "bailingmoe":  # bailingmoe requires output.weight
        out["output.weight"] = mat(state["lm_head.weight"])  # == the embedding when tied
    for i in range(config.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = f32(state[p + "input_layernorm.weight"])
        ffn_norm = "post_attention_norm" if arch == "glm4moe" else "ffn_norm"  # the same RMSNorm, another name
        out[b + ffn_norm + ".weight"] = f32(state[p + "post_attention_layernorm.weight"])
        q, k = state[p + "self_attn.q_proj.weight"], state[p + "self_attn.k_proj.weight"]  # (heads * hd, C)
        if config.qk_norm:  # NEOX RoPE pairs (i, i + d/2) like our rotate_half, rows stay as they are
            out[b + "attn_q_norm.weight"] = f32(state[p + "self_attn.q_norm.weight"])  # (hd,)
            out[b + "attn_k_norm.weight"] = f32(state[p + "self_attn.k_norm.weight"])
        if arch in NORMAL_ROPE:  # "normal" RoPE turns neighbours (2i, 2i+1)
            q = permute_rope_rows(q, config.num_attention_heads)
            k = permute_rope_rows(k, config.num_key_value_heads)
        out[b + "attn_q.weight"], out[b + "attn_k.weight"] = mat(q), mat(k)
        out[b + "attn_v.weight"] = mat(state[p + "self_attn.v_proj.weight"])
        out[b + "attn_output.weight"] = mat(state[p + "self_attn.o_proj.weight"])
        if config.use_moe:
            out.update(_moe_tensors(state, p + "mlp.", b, config, arch, mat))
        else:
            for ours, theirs in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                out[b + theirs + ".weight"] = mat(state[p + "mlp." + ours + ".weight"])
    return out


def _moe_tensors(state, p: str, b: str, config, arch: str, mat) -> dict[str, np.ndarray]:
    """One MoE layer: the router (n_expert, C) in float32, the routed experts stacked as llama.cpp's
    ffn_{gate,up}_exps (n_expert, width, C) and ffn_down_exps (n_expert, C, width), the shared experts side by side
    as ffn_{gate,up}_shexp (n_shared * width, C) and ffn_down_shexp (C, n_shared * width)."""
    out = {b + "ffn_gate_inp.weight": np.ascontiguousarray(state[p + "gate.weight"].astype(np.float32))}
    if arch == "glm4moe":  # added to the probabilities to choose the experts, not to weight them: zero
        out[b + "exp_probs_b.bias"] = np.zeros(config.n_routed_experts, dtype=np.float32)
    for name in ("gate", "up", "down"):
        out[f"{b}ffn_{name}_exps.weight"] = mat(np.stack([state[f"{p}experts.{e}.{name}_proj.weight"]
                                                          for e in range(config.n_routed_experts)]))
    if arch == "qwen3moe":  # no shared expert
        return out
    width, hidden = config.moe_intermediate_size, config.hidden_size
    shared = [[state[f"{p}shared_experts.{j}.{name}_proj.weight"] for j in range(config.n_shared_experts)]
              for name in ("gate", "up", "down")]
    if not config.n_shared_experts:  # bailingmoe and glm4moe always run one: a zero expert adds exactly 0
        shared = [[np.zeros((width, hidden))], [np.zeros((width, hidden))], [np.zeros((hidden, width))]]
    out[b + "ffn_gate_shexp.weight"] = mat(np.concatenate(shared[0], axis=0))
    out[b + "ffn_up_shexp.weight"] = mat(np.concatenate(shared[1], axis=0))
    out[b + "ffn_down_shexp.weight"] = mat(np.concatenate(shared[2], axis=1))
    return out


def _write_moe_metadata(writer, config, arch: str) -> None:
    import gguf
    writer.add_expert_count(config.n_routed_experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    if arch == "qwen3moe":  # softmax gating and top-k renormalisation are fixed in its graph
        return
    writer.add_expert_shared_count(max(config.n_shared_experts, 1))
    writer.add_leading_dense_block_count(0)  # every layer is an MoE layer
    writer.add_expert_weights_norm(config.norm_topk_prob)
    writer.add_expert_weights_scale(1.0)
    if arch == "glm4moe":  # its default is sigmoid
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)


def _tokenizer_vocab(tokenizer, vocab_size: int):
    """(tokens, token types, merges, pre-tokenizer name) from a MiniMindTokenizer, padded to vocab_size."""
    import gguf

    from ..data.tokenizer import SPECIAL_TOKENS
    state = json.loads(tokenizer.tokenizer.to_str())
    if state["model"]["type"] != "BPE":
        raise ValueError(f"GGUF export needs a BPE tokenizer, this one is {state['model']['type']}")
    pre = state.get("pre_tokenizer") or {}
    kinds = [pre] + list(pre.get("pretokenizers", []))
    if not any(k.get("type") == "ByteLevel" and k.get("use_regex", True) for k in kinds):
        raise ValueError("GGUF export expects a byte-level BPE tokenizer with GPT-2's split (ByteLevel "
                         "pre-tokenizer): llama.cpp would split this tokenizer's text differently")
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    if len(vocab) > vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab)} tokens, more than the model's vocab_size {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    special = {a["content"]: a.get("special", False) for a in state.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:  # embedding rows the tokenizer never produces
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif t in SPECIAL_TOKENS or special.get(t):
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL)
        elif t in special:  # added but not special: <think>, </think>
            tokens.append(t)
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"].get("merges", [])]
    return tokens, types, merges, "gpt-2"


def export_gguf(model, out_file, tokenizer=None, dtype: str = "f32", name: Optional[str] = None,
                merge_lora: bool = False) -> Path:
    """Write model and tokenizer to one .gguf file; returns its path. model may be a checkpoint folder (its
    tokenizer is used); a LoRA run folder is merged into its base when merge_lora=True."""
    import gguf
    if isinstance(model, (str, Path)):
        from ..model import load_checkpoint
        from .export import is_lora_run
        if is_lora_run(model) and not merge_lora:
            raise ValueError(f"{model} is a LoRA run (an adapter, not a whole model): pass --merge-lora "
                             "(merge_lora=True) to merge it into its base model and export the result")
        name = name or Path(model).resolve().name
        model, tok = load_checkpoint(model, tokenizer=tokenizer is None)
        tokenizer = tokenizer or tok
    if tokenizer is None:
        raise ValueError("GGUF export needs the tokenizer: save it in the checkpoint folder or pass tokenizer=")
    config = model.config
    arch = gguf_arch(config)
    tensors = gguf_tensors(model, dtype)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)  # metadata keys below go under `{arch}.`
    writer.add_name(name or "MiniMind")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    if config.use_moe:
        _write_moe_metadata(writer, config, arch)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if config.qk_norm or config.head_dim != config.hidden_size // config.num_attention_heads:
        # llama.cpp takes head size = hidden / heads unless told (and refuses a llama whose rope dims differ)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)
    if config.rope_scaling:
        s = config.rope_scaling
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(s["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(s.get("original_max_position_embeddings")
                                                 or config.max_position_embeddings))
        writer.add_rope_scaling_yarn_beta_fast(float(s.get("beta_fast") or 32.0))
        writer.add_rope_scaling_yarn_beta_slow(float(s.get("beta_slow") or 1.0))
    tokens, types, merges, pre = _tokenizer_vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_eot_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    for tname, array in tensors.items():
        writer.add_tensor(tname, array)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_file
