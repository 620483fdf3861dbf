"""MiniMind's own model code as one more side of `minimind bench`: which file, and its model built with
our config's shape."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch

from ..model.config import MiniMindConfig

# MiniMind's model file as the package ships it (minimind_code/README.md says where it comes from)
MINIMIND_CODE_FILE = Path(__file__).parent / "minimind_code" / "minimind2_model.py"


def find_minimind_code(given: Optional[str] = None) -> tuple[Optional[Path], Optional[str]]:
    """(MiniMind's model file, None), or (None, why not). `given`: that file or a checkout of MiniMind's
    repository (model/model_minimind.py in it); else the copy the package ships."""
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / "model" / "model_minimind.py"
        return (path, None) if path.is_file() else (None, f"--minimind-code {given}: {path} not found")
    if MINIMIND_CODE_FILE.is_file():
        return MINIMIND_CODE_FILE, None
    return None, f"{MINIMIND_CODE_FILE} not found: pass --minimind-code PATH"


def minimind_code_module(path: str | Path = MINIMIND_CODE_FILE):
    """MiniMind's model file imported as a module (its MiniMindConfig, MiniMindForCausalLM, ...)."""
    import hashlib
    import importlib.util
    path = Path(path)
    name = "_minimind_code_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # its config's deprecated transformers keys (rope_scaling)
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module


def minimind_code_model(path: str | Path, config: MiniMindConfig, seed: int = 0) -> torch.nn.Module:
    """MiniMind's own MiniMindForCausalLM from its model file, with our config's shape; weights random."""
    module = minimind_code_module(path)
    fields = dict(hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                  num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                  head_dim=config.head_dim, vocab_size=config.vocab_size, intermediate_size=config.intermediate_size,
                  max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
                  rms_norm_eps=config.rms_norm_eps, dropout=config.dropout, bos_token_id=config.bos_token_id,
                  eos_token_id=config.eos_token_id, tie_word_embeddings=config.tie_word_embeddings,
                  use_moe=False, flash_attn=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return module.MiniMindForCausalLM(module.MiniMindConfig(**fields))



def minimind_rope_scaling(path: str | Path = MINIMIND_CODE_FILE) -> dict:
    """MiniMind's own YaRN setting, read from its config class (`inference_rope_scaling=True`): the keys that
    decide the frequencies and the attention factor."""
    with warnings.catch_warnings():  # transformers warns that rope_scaling is deprecated
        warnings.simplefilter("ignore")
        theirs = minimind_code_module(path).MiniMindConfig(inference_rope_scaling=True).rope_scaling
    keys = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor")
    return {"rope_type": "yarn", **{k: theirs[k] for k in keys}}
