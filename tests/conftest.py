import os
import tempfile

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM

# token caches of the test session go to a fresh folder (notebook kernels and CLI subprocesses inherit it)
os.environ.setdefault("MINIMIND_CACHE", tempfile.mkdtemp(prefix="minimind-cache-"))


def small_config(**overrides) -> MiniMindConfig:
    """A model small enough for exact comparisons in milliseconds."""
    base = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256)
    return MiniMindConfig(**{**base, **overrides})


def random_model(config: MiniMindConfig, seed: int = 0) -> MiniMindForCausalLM:
    """Weights larger than the 0.02 init so that differences would show; norms away from 1."""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def dense():
    return random_model(small_config())


@pytest.fixture
def moe():
    return random_model(small_config(use_moe=True, n_routed_experts=4, n_shared_experts=1,
                                     num_experts_per_tok=2))
