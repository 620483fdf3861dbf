"""FLOPs per token, GPU peaks and model FLOPs utilisation (MFU), for `minimind bench` and the course plan.

MFU: FLOPs per token counted from the config, times tokens/s, over the GPU's peak bf16 FLOP/s from
`PEAK_BF16_FLOPS`; from a measured MFU, the time one epoch of MiniMind's pretrain_hq would take on an RTX 3090.
"""
from __future__ import annotations

from typing import Optional

from ..model.config import MiniMindConfig

# Dense (no sparsity) bf16 tensor-core peak with FP32 accumulation, from NVIDIA's datasheets and
# architecture whitepapers. Matched in this order against torch.cuda.get_device_name().
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H200", 989.4e12),        # H200 SXM: as H100 SXM
    ("H100 PCIE", 756.0e12),   # H100 PCIe
    ("H100", 989.4e12),        # H100 SXM (HBM3)
    ("A100", 312.0e12),        # A100 SXM and PCIe
    ("4090", 165.2e12),        # RTX 4090 (Ada whitepaper, FP32 accumulate)
    ("3090 TI", 80.0e12),      # RTX 3090 Ti
    ("3090", 71.0e12),         # RTX 3090 (GA102 whitepaper, FP32 accumulate)
]
RTX_3090 = "NVIDIA GeForce RTX 3090"

# MiniMind's pretrain_hq.jsonl (1.6 GB): its own pretraining log shows 44160 steps per epoch at batch
# size 32, i.e. 1,413,120 samples, each padded or cut to max_seq_len 512. The GPU computes every one of
# those positions (padding included), so an epoch is 1,413,120 x 512 = 7.24e8 token positions.
PRETRAIN_HQ_SAMPLES = 44160 * 32
PRETRAIN_HQ_SEQ_LEN = 512
PRETRAIN_HQ_TOKENS = PRETRAIN_HQ_SAMPLES * PRETRAIN_HQ_SEQ_LEN
SEED_EPOCH_HOURS_3090 = 1.1  # the seed project's report for minimind2-small, one pretrain_hq epoch


def matmul_params_per_token(config: MiniMindConfig) -> int:
    """Weights that each token multiplies with: attention projections, the MLP (for MoE the router, the
    shared experts and the top-k routed ones), and the output head. The embedding lookup is no matmul."""
    h, L, d = config.hidden_size, config.num_hidden_layers, config.head_dim
    attn = h * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)  # q, o; k, v
    if config.use_moe:
        expert = 3 * h * config.moe_intermediate_size
        mlp = expert * (config.num_experts_per_tok + config.n_shared_experts) + h * config.n_routed_experts
    else:
        mlp = 3 * h * config.intermediate_size
    return L * (attn + mlp) + h * config.vocab_size


def flops_per_token(config: MiniMindConfig, seq_len: int, training: bool = True) -> float:
    """FLOPs per token as PaLM (appendix B) and nanoGPT count them: 2 per multiply-add of every matmul
    weight, plus attention's two seq_len-long products (q k^T and weights v), 4 * seq_len * heads * head_dim
    per layer, counted over the full square (causal masking is not subtracted). Training (forward and
    backward) is 3 times the forward."""
    attention = 4 * config.num_hidden_layers * seq_len * config.num_attention_heads * config.head_dim
    forward = 2 * matmul_params_per_token(config) + attention
    return float(3 * forward if training else forward)


def peak_flops(device_name: Optional[str]) -> Optional[float]:
    """Peak dense bf16 FLOP/s of a GPU by name, None when it is not in PEAK_BF16_FLOPS (or a CPU)."""
    if not device_name:
        return None
    name = device_name.upper()
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak; None without a peak."""
    return None if not peak else tokens_per_s * flops_per_tok / peak


def epoch_hours(flops_per_tok: float, mfu_value: float, peak: float, tokens: float = PRETRAIN_HQ_TOKENS) -> float:
    """Hours for `tokens` at `mfu_value` of `peak` FLOP/s."""
    return tokens * flops_per_tok / (mfu_value * peak) / 3600


def pretrain_projection(mfu_value: Optional[float], config: Optional[MiniMindConfig] = None) -> dict:
    """One epoch of pretrain_hq on an RTX 3090 at `mfu_value` (measured on whatever GPU ran the bench;
    None on a CPU), with the MFU that the seed project's 1.1 hours implies for comparison."""
    config = config or MiniMindConfig.from_preset("minimind2-small")
    fpt = flops_per_token(config, PRETRAIN_HQ_SEQ_LEN)
    peak = peak_flops(RTX_3090)
    seed_mfu = PRETRAIN_HQ_TOKENS * fpt / (SEED_EPOCH_HOURS_3090 * 3600 * peak)
    return {"dataset": "pretrain_hq", "samples": PRETRAIN_HQ_SAMPLES, "seq_len": PRETRAIN_HQ_SEQ_LEN,
            "tokens": PRETRAIN_HQ_TOKENS, "preset": config.preset, "flops_per_token": fpt, "gpu": RTX_3090,
            "gpu_peak_flops": peak, "mfu": mfu_value,
            "hours": epoch_hours(fpt, mfu_value, peak) if mfu_value else None,
            "seed_hours": SEED_EPOCH_HOURS_3090, "seed_implied_mfu": seed_mfu}
