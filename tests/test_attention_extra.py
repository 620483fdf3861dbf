"""attention_weights: the per-layer, per-head softmax weights that chapter 03's heatmaps draw."""
import pytest
import torch
from conftest import random_model, small_config

from minimind.model.attention import Attention, attention_weights, repeat_kv
from minimind.model.rope import rope_cos_sin


def test_shape_rows_sum_to_one_and_causal():
    model = random_model(small_config())
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    w = attention_weights(model, ids)
    assert w.shape == (2, 2, 4, 9, 9)  # layers, batch, heads, query, key
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 4, 9), atol=1e-5)
    assert (w.triu(1) == 0).all()  # no query looks at a later token


def test_weights_reproduce_the_layer_output():
    """Weights @ v, through o_proj, is the attention layer's own output (SDPA path)."""
    model = random_model(small_config())
    ids = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(1))
    w = attention_weights(model, ids)
    attn = model.model.layers[0].self_attn
    x = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
    cos, sin = rope_cos_sin(model.model.inv_freq, torch.arange(7)[None])
    v = attn.v_proj(x).view(1, 7, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    out = (w[0] @ repeat_kv(v, attn.n_heads // attn.n_kv_heads)).transpose(1, 2).reshape(1, 7, -1)
    with torch.no_grad():
        assert torch.allclose(attn.o_proj(out), attn(x, cos, sin), atol=1e-5)


def test_outputs_unchanged_and_hooks_removed():
    model = random_model(small_config())
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits
    attention_weights(model, ids)
    assert all(not m._forward_hooks for m in model.modules() if isinstance(m, Attention))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_padding_mask_is_respected():
    model = random_model(small_config())
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    w = attention_weights(model, ids, attention_mask=mask)
    assert (w[..., 2:, :2] == 0).all()  # real tokens never look at the left padding


def test_rejects_a_model_without_attention():
    with pytest.raises(ValueError, match="Attention"):
        attention_weights(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long))
