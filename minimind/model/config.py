"""MiniMindConfig: every shape of the model in one place, with named presets (the course's one dial)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import minimind_format


def _swiglu_width(hidden_size: int) -> int:
    # MiniMind (like Llama) takes 8/3 of the hidden size for SwiGLU, rounded up to a multiple of 64.
    return 64 * math.ceil(hidden_size * 8 / 3 / 64)


_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "dict": dict}
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "head_dim", "intermediate_size", "moe_intermediate_size", "max_position_embeddings")


@dataclass
class MiniMindConfig:
    vocab_size: int = 6400
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: Optional[int] = None  # None: hidden_size / num_attention_heads (minimind-3 says it explicitly)
    intermediate_size: Optional[int] = None  # None: 8/3 * hidden, rounded up to 64
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    # YaRN, as transformers spells it: {"rope_type": "yarn", "factor": 16.0,
    # "original_max_position_embeddings": 2048, "beta_fast": 32.0, "beta_slow": 1.0}
    rope_scaling: Optional[dict] = None
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    initializer_range: float = 0.02
    # explicit matmul/softmax attention instead of F.scaled_dot_product_attention (same numbers, slower)
    explicit_attention: bool = False
    # minimind-3 (as Qwen3): an RMSNorm over each head's query and key before RoPE (q_norm, k_norm)
    qk_norm: bool = False
    # mixture of experts
    use_moe: bool = False
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    moe_intermediate_size: Optional[int] = None  # each expert's width; None: intermediate_size
    norm_topk_prob: bool = True
    aux_loss_alpha: float = 0.01
    # special tokens (the course tokenizer's ids)
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    preset: Optional[str] = None

    def __post_init__(self):
        self._check_types()
        if self.intermediate_size is None:
            self.intermediate_size = _swiglu_width(self.hidden_size)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        explicit_head_dim = self.head_dim is not None
        if not explicit_head_dim:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        small = [f"{n}={getattr(self, n)}" for n in _SIZES if getattr(self, n) < 1]
        if small:
            raise ValueError(f"{', '.join(small)}: every size of the model must be at least 1")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} is odd: RoPE turns channels in pairs, so it must be even")
        if not explicit_head_dim and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}: pick a head count that divides the width")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}: each KV head must serve a whole group")
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} must be between 1 and "
                             f"n_routed_experts={self.n_routed_experts}")

    def _check_types(self) -> None:
        """A config read from JSON may hold anything: refuse a wrong type by name (`"hidden_size": "big"`)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            optional = kind.startswith("Optional[")
            kind = kind.removeprefix("Optional[").removesuffix("]")
            if value is None and optional or kind not in _TYPES:
                continue
            if not isinstance(value, _TYPES[kind]) or (kind in ("int", "float") and isinstance(value, bool)):
                raise ValueError(f"{f.name}={value!r} should be {'null or ' if optional else ''}{kind}")

    # -- presets ---------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MiniMindConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, qk_norm: Optional[bool] = None) -> "MiniMindConfig":
        """Ours, or one written by MiniMind's own code (either generation; qk_norm: whether its weights have
        q_norm, which tells the generations apart surely)."""
        if minimind_format.is_minimind_config(d):
            return cls(**minimind_format.config_fields(d, qk_norm))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"model_type", "architectures"})
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; is it a MiniMind config.json?")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        d = {"model_type": "minimind", **self.to_dict()}
        Path(path).write_text(json.dumps(d, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, qk_norm: Optional[bool] = None) -> "MiniMindConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: a MiniMind checkpoint folder holds config.json")
        try:
            return cls.from_dict(json.loads(path.read_text()), qk_norm)
        except (ValueError, TypeError) as err:  # bad JSON, unknown fields, wrong types, impossible shapes
            raise ValueError(f"{path}: {err}; fix the file or save the checkpoint again") from None


PRESETS: dict[str, dict] = {
    # CPU course: a few million parameters, trains on the course corpus in minutes on 2 cores.
    "tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                 intermediate_size=512, max_position_embeddings=1024),
    # MiniMind2-small, 25.8M
    "minimind2-small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                            num_key_value_heads=2, intermediate_size=1408),
    # MiniMind2, 104.0M
    "minimind2": dict(hidden_size=768, num_hidden_layers=16, num_attention_heads=8, num_key_value_heads=2),
    # MiniMind2-MoE, 145.0M: 1 shared + 4 routed experts, top-2
    "minimind2-moe": dict(hidden_size=640, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                          use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2),
    # minimind-3 (2026, Qwen3-aligned), 63.9M: q/k-norm, 4 KV heads, SwiGLU width ceil(pi * hidden / 64) * 64
    # (its MoE settings ride along, so that use_moe=True gives minimind-3-moe)
    "minimind-3": dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                       intermediate_size=2432, rms_norm_eps=1e-6, qk_norm=True,
                       n_routed_experts=4, n_shared_experts=0, num_experts_per_tok=1, aux_loss_alpha=5e-4),
}
# minimind-3-moe, 198.4M (63.9M active): 4 routed experts, top-1, no shared expert
PRESETS["minimind-3-moe"] = dict(PRESETS["minimind-3"], use_moe=True)
