"""Export a checkpoint as a transformers folder that loads without remote code.

MiniMind2 generation: dense -> `LlamaForCausalLM`; MoE -> `Qwen2MoeForCausalLM`, whose sigmoid-gated shared
expert equals MiniMind's ungated one with a zero gate and a doubled down_proj (exactly: powers of two;
chapter 06). Several shared experts are concatenated into one.
minimind-3 generation (q/k-norm): dense -> `Qwen3ForCausalLM`; MoE without shared experts ->
`Qwen3MoeForCausalLM`. Same weight names as ours in all four.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..data.files import atomic_write
from ..model.transformer import MiniMindForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def hf_config(config) -> dict:
    common = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, rope_scaling=config.rope_scaling, hidden_act="silu",
        tie_word_embeddings=config.tie_word_embeddings, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, attention_dropout=0.0,
        initializer_range=config.initializer_range, torch_dtype="float32", use_cache=True)
    if config.qk_norm:
        return qwen3_config(config, common)
    if not config.use_moe:
        return dict(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False,
                    mlp_bias=False, intermediate_size=config.intermediate_size, **common)
    return dict(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe", qkv_bias=False,
                intermediate_size=config.intermediate_size, moe_intermediate_size=config.moe_intermediate_size,
                shared_expert_intermediate_size=config.moe_intermediate_size * max(config.n_shared_experts, 1),
                num_experts=config.n_routed_experts, num_experts_per_tok=config.num_experts_per_tok,
                norm_topk_prob=config.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[],
                use_sliding_window=False, sliding_window=None, router_aux_loss_coef=config.aux_loss_alpha,
                output_router_logits=False, **common)


def qwen3_config(config, common: dict) -> dict:
    """minimind-3 is Qwen3 (q/k-norm before RoPE); its MoE is Qwen3-MoE, which has no shared expert."""
    qwen = dict(attention_bias=False, use_sliding_window=False, sliding_window=None,
                max_window_layers=config.num_hidden_layers, intermediate_size=config.intermediate_size, **common)
    if not config.use_moe:
        return dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", **qwen)
    if config.n_shared_experts:
        raise ValueError(f"this model has q/k-norm and {config.n_shared_experts} shared expert(s): transformers' "
                         "Qwen3-MoE has no shared expert, so no architecture there computes it; keep it as a "
                         "MiniMind checkpoint (n_shared_experts=0 is what minimind-3-moe uses)")
    return dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
                moe_intermediate_size=config.moe_intermediate_size, num_experts=config.n_routed_experts,
                num_experts_per_tok=config.num_experts_per_tok, norm_topk_prob=config.norm_topk_prob,
                decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=config.aux_loss_alpha,
                output_router_logits=False, **qwen)


def hf_state_dict(model: MiniMindForCausalLM) -> dict[str, torch.Tensor]:
    config = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    if not config.use_moe or config.qk_norm:  # Llama, Qwen3 and Qwen3-MoE spell every weight as we do
        return state
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}.mlp."
        shared = [[state.pop(f"{p}shared_experts.{j}.{name}.weight") for j in range(config.n_shared_experts)]
                  for name in ("gate_proj", "up_proj", "down_proj")]
        if config.n_shared_experts == 0:  # a zero expert adds nothing
            zeros = torch.zeros(config.moe_intermediate_size, config.hidden_size)
            shared = [[zeros], [zeros], [zeros.T.contiguous()]]
        state[p + "shared_expert.gate_proj.weight"] = torch.cat(shared[0], dim=0)
        state[p + "shared_expert.up_proj.weight"] = torch.cat(shared[1], dim=0)
        state[p + "shared_expert.down_proj.weight"] = torch.cat(shared[2], dim=1) * 2  # (H, n_shared * I)
        state[p + "shared_expert_gate.weight"] = torch.zeros(1, config.hidden_size)  # sigmoid(0) * 2 == 1
    return state


def is_lora_run(folder) -> bool:
    """A LoRA run folder holds the adapter alone (adapter.safetensors + adapter_config.json naming its base)."""
    from ..model.lora import ADAPTER_CONFIG
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).exists() and not (folder / "model.safetensors").exists()


def export_hf(model_or_path, out_dir: str | Path, tokenizer=None, merge_lora: bool = False) -> Path:
    """Write config.json, model.safetensors and the tokenizer files for transformers into out_dir; returns it.
    model_or_path: a model (pass its tokenizer too) or a checkpoint folder; a LoRA run needs merge_lora=True."""
    from safetensors.torch import save_file
    source = None
    tok_sources = []
    if isinstance(model_or_path, (str, Path)):
        source = Path(model_or_path)
        if is_lora_run(source):
            if not merge_lora:
                raise ValueError(f"{source} is a LoRA run (an adapter, not a whole model): pass --merge-lora "
                                 "(merge_lora=True) to merge it into its base model and export the result")
            from ..model import load_checkpoint
            from ..model.checkpoint import lora_base
            model = load_checkpoint(source, tokenizer=False)[0]
            tok_sources = [source, lora_base(source)]
        else:
            model = MiniMindForCausalLM.from_pretrained(source)
            tok_sources = [source]
    else:
        model = model_or_path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(model)
    atomic_write(out / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    config = hf_config(model.config)
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    gen = {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
           "pad_token_id": model.config.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    else:  # the first folder that has a tokenizer gives all its files
        for folder in tok_sources:
            if (folder / "tokenizer.json").exists():
                for name in TOKENIZER_FILES:
                    if (folder / name).exists():
                        shutil.copyfile(folder / name, out / name)
                break
    return out
