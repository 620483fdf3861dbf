"""The model: config and presets, attention, RoPE/YaRN, norms and MLPs, MoE, the loss, generation, LoRA,
and checkpoint I/O."""
from .config import PRESETS, MiniMindConfig
from .transformer import CausalLMOutput, MiniMindForCausalLM

load_checkpoint = MiniMindForCausalLM.load_checkpoint

__all__ = ["PRESETS", "MiniMindConfig", "MiniMindForCausalLM", "CausalLMOutput", "load_checkpoint"]
