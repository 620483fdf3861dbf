"""The inspection helpers of chapters 05 and 06: parameter breakdowns and router statistics."""
import math

import pytest
import torch
from conftest import small_config

from minimind import PRESETS, MiniMindConfig, MiniMindForCausalLM
from minimind.course.anatomy import (
    active_parameters,
    balance_demo,
    expert_load,
    parameter_breakdown,
    route,
    router_logits,
    scaled_config,
    toy_text,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_breakdown_sums_to_the_model(name):
    config = MiniMindConfig.from_preset(name)
    with torch.device("meta"):
        total = MiniMindForCausalLM(config).num_parameters()
    parts = parameter_breakdown(config)
    assert sum(parts.values()) == total
    h, L, kv = config.hidden_size, config.num_hidden_layers, config.num_key_value_heads * config.head_dim
    q = config.num_attention_heads * config.head_dim
    assert parts["embedding"] == config.vocab_size * h  # tied: the output head is the embedding
    assert "output head" not in parts
    qk_norms = 2 * config.head_dim if config.qk_norm else 0  # one weight per head channel, for q and for k
    assert parts["attention"] == L * (2 * h * q + 2 * h * kv + qk_norms)
    assert parts["norms"] == (2 * L + 1) * h
    ffn = 3 * h * config.moe_intermediate_size
    if config.use_moe:
        assert parts["routed experts"] == L * config.n_routed_experts * ffn
        assert parts.get("shared experts", 0) == L * config.n_shared_experts * ffn
        assert parts["router"] == L * config.n_routed_experts * h
    else:
        assert parts["MLP"] == L * 3 * h * config.intermediate_size


def test_untied_head_is_its_own_component():
    parts = parameter_breakdown(small_config(tie_word_embeddings=False))
    assert parts["output head"] == parts["embedding"] == 97 * 64


def test_active_parameters():
    dense = MiniMindConfig.from_preset("minimind2-small")
    assert active_parameters(dense) == sum(parameter_breakdown(dense).values())
    moe = MiniMindConfig.from_preset("minimind2-moe")
    parts = parameter_breakdown(moe)
    assert active_parameters(moe) == sum(parts.values()) - parts["routed experts"] // 2  # top-2 of 4


def test_scaled_config_keeps_valid_heads():
    for preset in PRESETS:
        for hidden in (64, 192, 320, 512, 1024):
            config = scaled_config(preset, hidden, 3)
            assert config.hidden_size == hidden and config.num_hidden_layers == 3
            assert config.intermediate_size == 64 * math.ceil(hidden * 8 / 3 / 64)


def test_route_is_the_layers_routing(moe):
    mlp = moe.model.layers[0].mlp
    x = torch.randn(7, 64)
    with torch.no_grad():
        expected = mlp.route(x)
        got = route(mlp.gate(x), top_k=2)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    probs, weights, idx = route(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), top_k=2, temperature=100.0)
    assert probs.max() - probs.min() < 0.05  # a hot router is almost uniform


def test_expert_load_and_router_logits(moe):
    x = torch.randint(0, 97, (2, 9))
    logits = router_logits(moe, x)
    assert len(logits) == 2 and logits[0].shape == (18, 4)
    for layer, lg in zip(moe.model.layers, logits):  # the hook sees what the layer routed with
        assert torch.equal(route(lg, 2)[2], layer.mlp.last_topk_idx.reshape(18, 2))
    load = expert_load(moe.model.layers[0].mlp.last_topk_idx, 4)
    assert load.shape == (4,) and load.sum().item() == pytest.approx(1.0)
    assert expert_load(torch.tensor([[0, 1], [0, 1]]), 4).tolist() == [0.5, 0.5, 0.0, 0.0]


def test_balancing_loss_rebalances_a_collapsed_router():
    without = balance_demo(0.0, steps=30)
    with_aux = balance_demo(0.1, steps=30)
    assert without["load"][0].tolist() == [0.5, 0.5, 0.0, 0.0]  # starts collapsed
    assert without["load"][-1].tolist() == [0.5, 0.5, 0.0, 0.0]  # the task loss cannot see unchosen experts
    assert with_aux["load"][-1].max() < 0.4 and with_aux["load"][-1].min() > 0.1


def test_toy_text_is_deterministic_ascii():
    text = toy_text(50, seed=1)
    assert text == toy_text(50, seed=1) and text != toy_text(50, seed=2)
    assert max(text.encode()) < 128 and "=" in text


def test_qk_norm_keeps_attention_logits_from_growing_with_the_weights():
    from minimind.course.anatomy import attention_logit_growth
    config = small_config(qk_norm=True, rms_norm_eps=1e-9)
    plain = attention_logit_growth(small_config(), [1, 4], seq_len=16)
    normed = attention_logit_growth(config, [1, 4], seq_len=16)
    assert plain["max_logit"][1] == pytest.approx(16 * plain["max_logit"][0], rel=1e-4)  # q and k both scale
    assert normed["max_logit"][1] == pytest.approx(normed["max_logit"][0], rel=1e-4)  # RMSNorm undoes it
    assert plain["entropy"][1] < plain["entropy"][0] and normed["entropy"][1] == pytest.approx(normed["entropy"][0])


def test_generation_table_reads_the_presets():
    from minimind.course.anatomy import generation_table
    mm2, mm3, moe3 = generation_table(["minimind2-small", "minimind-3", "minimind-3-moe"])
    assert (mm2["head_dim"], mm3["head_dim"], mm3["kv_heads"]) == (64, 96, 4)
    assert mm3["kv_bytes_per_token"] == 2 * 8 * 4 * 96 * 2 and moe3["moe"] == "0+4, top-1"
    assert moe3["params"] == 198_416_640 and moe3["active"] == mm3["params"] + 8 * 4 * 768  # plus the router
