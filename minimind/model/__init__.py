"""The model: config and presets, attention, RoPE/YaRN, norms and MLPs, MoE, the loss, generation, LoRA,
checkpoint I/O, and the tools a model may call (`tools`: toolboxes and the multi-turn tool loop)."""
from .config import PRESETS, MiniMindConfig
from .transformer import CausalLMOutput, MiniMindForCausalLM

load_checkpoint = MiniMindForCausalLM.load_checkpoint

__all__ = ["PRESETS", "MiniMindConfig", "MiniMindForCausalLM", "CausalLMOutput", "load_checkpoint"]
