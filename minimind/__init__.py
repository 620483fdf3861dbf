"""MiniMind from scratch: the package every chapter of the course imports.

Subpackages by job, each importing only those before it: data, model, train, align, use and course.
"""
from . import align  # noqa: F401  (registers the alignment stages beside the supervised ones)
from .model import PRESETS, CausalLMOutput, MiniMindConfig, MiniMindForCausalLM

__version__ = "0.1.0"
__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "CausalLMOutput", "PRESETS", "__version__"]
