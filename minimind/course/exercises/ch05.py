"""Chapter 05, the model: RMSNorm, SwiGLU, and where the parameters are."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import exercise


@exercise("05.rms_norm", "divide x by sqrt(mean(x ** 2 over the last dim) + eps), then multiply by weight; no mean "
                         "is subtracted (that is LayerNorm)")
def _check_rms(rms_norm):
    from ...model.layers import RMSNorm
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 4, 16, generator=g) * 3 + 1, torch.rand(16, generator=g) + 0.5
    norm = RMSNorm(16, eps=1e-5)
    norm.weight.data = w
    got, want = rms_norm(x, w, 1e-5), norm(x)
    if tuple(got.shape) != tuple(want.shape):
        return f"the output has shape {tuple(got.shape)}; expected {tuple(want.shape)}"
    if torch.allclose(got, F.layer_norm(x, (16,), w, eps=1e-5), atol=1e-5):
        return "that is LayerNorm: RMSNorm does not subtract the mean"
    if not torch.allclose(got, want, atol=1e-5):
        return f"the outputs differ from MiniMind's RMSNorm by up to {(got - want).abs().max():.3g}"
    return None


@exercise("05.swiglu", "down(silu(gate(x)) * up(x)): three matrices, with x @ W.T for each nn.Linear weight W")
def _check_swiglu(swiglu):
    from ...model.layers import FeedForward
    torch.manual_seed(0)
    ff = FeedForward(16, 40)
    x = torch.randn(2, 5, 16)
    got = swiglu(x, ff.gate_proj.weight.detach(), ff.up_proj.weight.detach(), ff.down_proj.weight.detach())
    want = ff(x).detach()
    if tuple(got.shape) != tuple(want.shape):
        return f"the output has shape {tuple(got.shape)}; expected {tuple(want.shape)}"
    if not torch.allclose(got, want, atol=1e-5):
        return f"the outputs differ from MiniMind's FeedForward by up to {(got - want).abs().max():.3g}"
    return None


PRESETS_CHECKED = ("tiny", "minimind2-small", "minimind2")


def parameters(preset: str) -> int:
    from ...model.config import MiniMindConfig
    from ...model.transformer import MiniMindForCausalLM
    with torch.device("meta"):  # shapes only: no memory, no time
        model = MiniMindForCausalLM(MiniMindConfig.from_preset(preset))
    return sum(p.numel() for p in model.parameters())


@exercise("05.count_parameters", "per layer: q_proj and o_proj are hidden x (heads x head_dim), k_proj and v_proj "
                                 "hidden x (kv_heads x head_dim), three SwiGLU matrices hidden x intermediate, two "
                                 "RMSNorm weights; then the embedding (vocab x hidden, shared with lm_head) and the "
                                 "final norm")
def _check_count(count_parameters):
    from ...model.config import MiniMindConfig
    for preset in PRESETS_CHECKED:
        got, want = int(count_parameters(MiniMindConfig.from_preset(preset))), parameters(preset)
        if got != want:
            return f"{preset}: {got:,}; the model has {want:,} ({want - got:+,})"
    return None
