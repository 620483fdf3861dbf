"""MiniMind from scratch: the package every chapter of the course imports."""
from .config import PRESETS, MiniMindConfig
from .model import CausalLMOutput, MiniMindForCausalLM

__version__ = "0.1.0"
__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "CausalLMOutput", "PRESETS", "__version__"]
