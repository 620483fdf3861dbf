"""Chapter 09, LoRA: merging an adapter, and what it trains."""
from __future__ import annotations

import torch

from . import exercise


@exercise("09.lora_merge", "the adapter adds (alpha / r) * B @ A to the frozen weight W, with A (r, in) and "
                           "B (out, r)")
def _check_merge(merge):
    from ...model.lora import LoRALinear
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(12, 10, bias=False), rank=4, alpha=8.0)
    torch.nn.init.normal_(layer.lora_B)  # B starts at zero; a trained one does not
    W, A, B = layer.base.weight.detach(), layer.lora_A.detach(), layer.lora_B.detach()
    got, want = merge(W, A, B, 8.0, 4), layer.merged_weight().detach()
    if tuple(got.shape) != (10, 12):
        return f"the merged weight has shape {tuple(got.shape)}; expected (10, 12), as W"
    if torch.allclose(got, W + B @ A, atol=1e-5):
        return "the adapter is added unscaled: multiply B @ A by alpha / r"
    if not torch.allclose(got, want, atol=1e-5):
        return "the merged weight differs from LoRALinear.merged_weight()"
    x = torch.randn(3, 12)
    assert torch.allclose(x @ got.T, layer(x), atol=1e-4), "a merged layer must compute what the adapted one does"
    return None


def lora_parameters(preset: str = "tiny", rank: int = 8) -> int:
    from ...model.config import MiniMindConfig
    from ...model.lora import apply_lora
    from ...model.transformer import MiniMindForCausalLM
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig.from_preset(preset))
    apply_lora(model, rank=rank)
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


@exercise("09.lora_parameters", "an adapter on a Linear of in_features -> out_features has r * (in + out) "
                                "parameters; the seven projections (q, k, v, o, gate, up, down) of every layer get one")
def _check_count(answer):
    want = lora_parameters()
    if int(answer) != want:
        return f"{int(answer):,}; the rank-8 adapters have {want:,}"
    return None
