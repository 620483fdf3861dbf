"""LoRA: learn a low-rank update W + (alpha/r) * B A beside a frozen weight W.

A is (r, in), B is (out, r) and starts at zero, so training starts from the base model exactly. Only A and
B train: a few percent of the parameters. The adapters are saved alone, and can be merged into W, after
which the model is an ordinary MiniMind model again with the same outputs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..data.files import atomic_write

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        base.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T.to(x.dtype)) @ self.lora_B.T.to(x.dtype) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + (self.lora_B @ self.lora_A).to(self.base.weight.dtype) * self.scaling


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets=DEFAULT_TARGETS) -> list[str]:
    """Freeze every parameter, then wrap each Linear whose name ends in a target with a LoRA adapter."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in targets:
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no Linear layer named any of {list(targets)}: check --lora-targets")
    return wrapped


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


def lora_config(model: nn.Module) -> dict:
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)})
    return {"rank": layers[0].rank, "alpha": layers[0].alpha, "targets": names}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain Linear back (in place)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight.copy_(child.merged_weight())
                setattr(module, child_name, child.base)
    return model


def save_adapter(model: nn.Module, out_dir: str | Path, base: str | None = None) -> Path:
    from safetensors.torch import save_file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()}
    atomic_write(out / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    config = {**lora_config(model), "base": str(base) if base else None}
    atomic_write(out / ADAPTER_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Wrap the model as the adapter's config says and load the adapter weights into it."""
    from safetensors.torch import load_file
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    apply_lora(model, config["rank"], config["alpha"], tuple(config["targets"]))
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    missing = set(lora_state_dict(model)) - set(tensors)
    if missing:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS} lacks {sorted(missing)[:3]}...: adapter and base "
                         "model do not match")
    model.load_state_dict(tensors, strict=False)
    return model
