"""The model's invariants: causality, attention paths, KV cache, RoPE, GQA, MoE routing, sizes, checkpoints; then
the inspection helpers of chapters 03, 05 and 06: attention weights, parameter breakdowns, router statistics."""
import math

import pytest
import torch
from conftest import random_model, small_config

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
from minimind.model.attention import Attention, attention_weights, explicit_attention, repeat_kv
from minimind.model.moe import load_balancing_loss
from minimind.model.rope import apply_rope, rope_cos_sin, rope_inv_freq, yarn_inv_freq


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_causality(kind, request):
    model = request.getfixturevalue(kind)
    x = torch.randint(0, 97, (2, 24))
    y = x.clone()
    y[:, 15:] = torch.randint(0, 97, (2, 9))  # change the future only
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=1e-6)
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 1e-3  # and the future does change


def test_explicit_attention_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(explicit_attention(q, k, v, is_causal=True), ref, rtol=1e-5, atol=1e-6)
    mask = torch.rand(2, 1, 10, 10) > 0.3
    mask[..., 0] = True
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask), ref, rtol=1e-5, atol=1e-6)


def test_explicit_model_equals_sdpa_model():
    sdpa = random_model(small_config())
    explicit = random_model(small_config(explicit_attention=True))
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(explicit(x).logits, sdpa(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_kv_cache_equals_recompute(kind, request):
    model = request.getfixturevalue(kind)
    x = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :10], use_cache=True)
        torch.testing.assert_close(out.logits, full[:, :10], rtol=1e-5, atol=1e-5)
        cache = out.past_key_values
        for t in range(10, 30):  # one token at a time
            step = model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits
            torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
        assert len(cache) == 30


def test_greedy_generate_matches_argmax_of_full_forward(dense):
    prompt = torch.randint(0, 97, (1, 5))
    out = dense.generate(prompt, max_new_tokens=12)
    assert out.shape == (1, 17)
    for t in range(5, 17):  # every new token is the argmax of recomputation over its prefix
        with torch.no_grad():
            assert dense(out[:, :t]).logits[0, -1].argmax() == out[0, t]


def test_left_padded_batch_generates_like_single_rows(dense):
    a, b = torch.randint(3, 97, (1, 7)), torch.randint(3, 97, (1, 4))
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = dense.generate(batch, max_new_tokens=6, attention_mask=mask)
    assert torch.equal(out[0, 7:], dense.generate(a, max_new_tokens=6)[0, 7:])
    assert torch.equal(out[1, 7:], dense.generate(b, max_new_tokens=6)[0, 4:])


def test_generate_stops_at_eos_and_streams(dense):
    prompt = torch.randint(0, 97, (1, 4))
    free = dense.generate(prompt, max_new_tokens=8)
    eos = int(free[0, 6])  # pretend the third new token is EOS
    streamed = [int(t) for t in dense.stream_generate(prompt, max_new_tokens=8, eos_token_id=eos)]
    first = free[0, 4:].tolist().index(eos)
    assert streamed == free[0, 4:4 + first + 1].tolist()


def test_sampling_filters():
    from minimind.model.generation import process_logits
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(process_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(process_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 covers it
    pen = process_logits(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), repetition_penalty=2.0)
    assert pen.tolist() == [[1.0, -4.0, 1.0]]
    g = torch.Generator().manual_seed(0)
    model = random_model(small_config())
    a = model.generate(torch.ones(1, 3, dtype=torch.long), 10, do_sample=True, temperature=0.8, top_p=0.9,
                       generator=g)
    b = model.generate(torch.ones(1, 3, dtype=torch.long), 10, do_sample=True, temperature=0.8, top_p=0.9,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    inv = rope_inv_freq(16, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = rope_cos_sin(inv, torch.tensor([[m]]))
        ck, sk = rope_cos_sin(inv, torch.tensor([[n]]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
    assert score(7, 3) == pytest.approx(score(4, 0), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(8, 3), abs=1e-3)
    cos, sin = rope_cos_sin(inv, torch.tensor([[5]]))  # a rotation keeps lengths
    assert apply_rope(q, cos, sin).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_yarn_interpolates_slow_channels_only():
    base = rope_inv_freq(64, 1e6)
    inv, attn = yarn_inv_freq(64, 1e6, factor=4.0, original_max_position_embeddings=2048)
    assert attn == pytest.approx(0.1 * math.log(4) + 1)
    torch.testing.assert_close(inv[:4], base[:4])          # fast channels untouched
    torch.testing.assert_close(inv[-4:], base[-4:] / 4)    # slow channels stretched by the factor


def test_gqa_with_all_kv_heads_equals_multi_head():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    gqa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(gqa, explicit_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-6)
    # and a model with kv heads == heads is plain multi-head attention: same as repeating a 2-KV model's heads
    gq = random_model(small_config(num_key_value_heads=2))
    mha = MiniMindForCausalLM(small_config(num_key_value_heads=4)).eval()
    state = gq.state_dict()
    for i in range(2):
        for name in ("k_proj", "v_proj"):
            w = state[f"model.layers.{i}.self_attn.{name}.weight"].view(2, 16, 64)
            state[f"model.layers.{i}.self_attn.{name}.weight"] = w.repeat_interleave(2, 0).reshape(64, 64)
    mha.load_state_dict(state)
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(mha(x).logits, gq(x).logits, rtol=1e-5, atol=1e-5)
    assert repeat_kv(torch.arange(2.0).view(1, 2, 1, 1), 2).flatten().tolist() == [0, 0, 1, 1]


def test_moe_routes_each_token_to_exactly_k_experts(moe):
    x = torch.randint(0, 97, (3, 11))
    with torch.no_grad():
        moe(x)
    for layer in moe.model.layers:
        idx = layer.mlp.last_topk_idx
        assert idx.shape == (3, 11, 2)
        assert (idx[..., 0] != idx[..., 1]).all()  # two distinct experts per token
        assert ((idx >= 0) & (idx < 4)).all()


def test_moe_output_is_weighted_sum_of_chosen_experts(moe):
    mlp = moe.model.layers[0].mlp
    x = torch.randn(1, 5, 64)
    with torch.no_grad():
        out = mlp(x)
        probs, weights, idx = mlp.route(x.view(-1, 64))
        expected = torch.stack([
            sum(w * mlp.experts[int(e)](x[0, t]) for w, e in zip(weights[t], idx[t])) + mlp.shared_experts[0](x[0, t])
            for t in range(5)])
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))  # top-k weights renormalised


def test_aux_loss_minimal_for_uniform_router():
    n, k, alpha = 4, 2, 0.01
    idx = torch.randint(0, n, (2, 16, k))
    uniform = load_balancing_loss(torch.full((2, 16, n), 1 / n), idx, n, alpha)
    assert uniform.item() == pytest.approx(alpha)  # whatever the picks, a uniform router costs alpha
    collapsed_p = torch.zeros(2, 16, n)
    collapsed_p[..., 0] = 1.0
    collapsed_idx = torch.stack([torch.zeros(2, 16), torch.ones(2, 16)], -1).long()
    collapsed = load_balancing_loss(collapsed_p, collapsed_idx, n, alpha)
    assert collapsed.item() == pytest.approx(alpha * n / k)
    balanced_idx = torch.arange(16 * k).view(1, 16, k).expand(2, -1, -1) % n
    for _ in range(20):  # any router with balanced picks costs at least alpha
        p = torch.softmax(torch.randn(2, 16, n) * 3, -1)
        assert load_balancing_loss(p, balanced_idx, n, alpha).item() >= alpha - 1e-6


def test_moe_loss_includes_aux_in_training_only(moe):
    x = torch.randint(0, 97, (2, 10))
    moe.train()
    out = moe(x, labels=x)
    moe.eval()
    with torch.no_grad():
        plain = moe(x, labels=x)
    assert out.aux_loss.item() > 0 and plain.aux_loss is None
    torch.testing.assert_close(out.ce, plain.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.ce + out.aux_loss)


def test_loss_is_shifted_cross_entropy(dense):
    x = torch.randint(0, 97, (2, 9))
    labels = x.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        logits = dense(x).logits
        loss = dense(x, labels=labels).loss
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1),
                                            ignore_index=-100)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("name,expected", [("minimind2-small", 25.8), ("minimind2", 104.0),
                                           ("minimind2-moe", 145.0)])
def test_preset_parameter_counts(name, expected):
    with torch.device("meta"):
        model = MiniMindForCausalLM(MiniMindConfig.from_preset(name))
    assert round(model.num_parameters() / 1e6, 1) == expected


@pytest.mark.parametrize("name,expected", [("minimind-3", 63_912_192), ("minimind-3-moe", 198_416_640)])
def test_minimind3_parameter_counts(name, expected):
    # the exact counts MiniMind's own model code gives for its 2026 release
    config = MiniMindConfig.from_preset(name)
    assert config.intermediate_size == math.ceil(config.hidden_size * math.pi / 64) * 64 == 2432
    assert config.head_dim == 96 and config.qk_norm
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    assert model.num_parameters() == expected
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (96,)


def test_top1_router_gives_its_expert_full_weight():
    # minimind-3-moe routes each token to one expert with weight 1 (normalised top-1), as Qwen3-MoE does
    config = MiniMindConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, use_moe=True, n_routed_experts=4, n_shared_experts=0,
                            num_experts_per_tok=1)
    mlp = MiniMindForCausalLM(config).model.layers[0].mlp
    x = torch.randn(1, 5, 32)
    _, weights, idx = mlp.route(x.view(-1, 32))
    assert torch.equal(weights, torch.ones(5, 1))
    with torch.no_grad():
        expected = torch.stack([mlp.experts[int(e)](x[0, t]) for t, e in enumerate(idx[:, 0])])
        torch.testing.assert_close(mlp(x)[0], expected)


def test_qk_norm_normalises_each_head_before_rope():
    config = MiniMindConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, qk_norm=True, rms_norm_eps=1e-12)
    attn = MiniMindForCausalLM(config).model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (4 * 16, 32) and attn.o_proj.weight.shape == (32, 4 * 16)
    x = torch.randn(1, 6, 32)
    no_turn = torch.ones(1, 6, 16), torch.zeros(1, 6, 16)  # cos 1, sin 0: RoPE leaves q, k as they are
    with torch.no_grad():
        q, k = attn.project_qk(x, *no_turn)
    # unit weights: every head's query and key has root-mean-square 1
    torch.testing.assert_close(q.pow(2).mean(-1), torch.ones(1, 4, 6), rtol=0, atol=1e-4)
    torch.testing.assert_close(k.pow(2).mean(-1), torch.ones(1, 2, 6), rtol=0, atol=1e-4)


def test_tiny_preset_is_small():
    with torch.device("meta"):
        n = MiniMindForCausalLM(MiniMindConfig.from_preset("tiny")).num_parameters()
    assert 1e6 < n < 5e6
    assert set(PRESETS) == {"tiny", "minimind2-small", "minimind2", "minimind2-moe", "minimind-3", "minimind-3-moe"}


def test_save_and_load_round_trip(tmp_path, moe):
    moe.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    again = MiniMindForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    x = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        assert torch.equal(again(x).logits, moe(x).logits)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()  # still tied


def test_loading_into_another_shape_names_both_shapes(tmp_path, dense):
    dense.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError) as err:
        MiniMindForCausalLM.from_pretrained(tmp_path / "ckpt", config=small_config(hidden_size=32))
    msg = str(err.value)
    assert "(97, 64)" in msg and "(97, 32)" in msg and "model.embed_tokens.weight" in msg


def test_bad_configs_are_explained():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        MiniMindConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        MiniMindConfig.from_preset("huge")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        random_model(small_config(max_position_embeddings=8))(torch.zeros(1, 9, dtype=torch.long))


# -- attention_weights: the per-layer, per-head softmax weights that chapter 03's heatmaps draw ----------------
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


# -- the inspection helpers of chapters 05 and 06: parameter breakdowns and router statistics ----------------
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


def test_temperature_never_moves_the_chosen_experts_but_a_bias_does():
    from minimind.course.anatomy import balance_bias, choose_experts, expert_load
    from minimind.model.moe import route
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g) + torch.tensor([4.0, 3.0, 0.0, -1.0])  # experts 0 and 1 favoured
    for t in (0.1, 1.0, 10.0):  # dividing by T > 0 keeps the order: the same choice, other weights
        probs, idx = choose_experts(logits, 2, temperature=t)
        assert torch.equal(idx.sort(-1).values, route(logits, 2, t)[2].sort(-1).values)
        assert torch.allclose(probs, route(logits, 2, t)[0])
    before = expert_load(choose_experts(logits, 2)[1], 4)
    bias = balance_bias(logits, 2, steps=40, rate=0.2)
    after = expert_load(choose_experts(logits, 2, bias=bias)[1], 4)
    assert before.max() > 0.45 and after.max() < before.max() - 0.1  # the favourites lost tokens
    assert bias[0] < 0 < bias[3]  # lowered for the overloaded expert, raised for the idle one
    # the bias chooses but never weighs: the probabilities are those of the logits alone
    assert torch.equal(choose_experts(logits, 2, bias=bias)[0], choose_experts(logits, 2)[0])
