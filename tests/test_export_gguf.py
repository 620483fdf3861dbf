"""GGUF export: read back with gguf.GGUFReader (metadata, tokenizer, tensors, shapes), and a numpy forward
pass in llama.cpp's conventions that must give our logits: `llama` (neighbour-pair RoPE) for MiniMind2 and
`qwen3` (per-head q/k RMSNorm, then NEOX RoPE) for minimind-3; for MoE, `bailingmoe` (MiniMind2-MoE), `qwen3moe`
(minimind-3-moe) and `glm4moe` (other q/k-norm MoE models), with build_moe_ffn's routing. With llama-cpp-python
installed, the files also run in llama.cpp itself."""

import copy

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import random_model, small_config
from tiny_checkpoint import make_checkpoint, make_lora_run, make_tokenizer

from minimind import MiniMindConfig
from minimind.cli import main as cli
from minimind.model import load_checkpoint
from minimind.model.lora import merge_lora
from minimind.use.gguf import export_gguf, permute_rope_rows


def fields(reader):
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(reader):
    return {t.name: np.array(t.data) for t in reader.tensors}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("gguf") / "ckpt", context=128)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_out") / "model.gguf"
    assert cli(["export", "gguf", str(ckpt), "--out", str(out)]) == 0
    return out


def test_metadata_and_tokenizer(ckpt, exported):
    model, tok = load_checkpoint(ckpt)
    c = model.config
    f = fields(gguf.GGUFReader(str(exported)))
    assert f["general.architecture"] == "llama" and f["general.name"] == "ckpt" and f["general.file_type"] == 0
    assert (f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"]) == (
        c.num_hidden_layers, c.hidden_size, c.intermediate_size)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (
        c.num_attention_heads, c.num_key_value_heads)
    assert f["llama.context_length"] == 128 and f["llama.rope.dimension_count"] == c.head_dim
    assert f["llama.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.rms_norm_eps)
    assert f["llama.vocab_size"] == c.vocab_size
    assert "llama.attention.key_length" not in f  # head_dim == hidden / heads: llama.cpp's default, as before
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == c.vocab_size
    assert all(tok.token_to_id(t) == i for i, t in enumerate(tokens))
    types = f["tokenizer.ggml.token_type"]
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and types[3:5] == [gguf.TokenType.USER_DEFINED] * 2
    assert set(types[5:]) == {gguf.TokenType.NORMAL}
    assert f["tokenizer.ggml.merges"] == [" ".join(m) for m in tok.merges()]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"],
            f["tokenizer.ggml.padding_token_id"]) == (1, 2, 0)
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in f["tokenizer.chat_template"]


def test_tensors_names_shapes_values(ckpt, exported):
    model, _ = load_checkpoint(ckpt)
    c = model.config
    reader = gguf.GGUFReader(str(exported))
    t = tensors(reader)
    per_layer = ["attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                 "ffn_down"]
    want = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in range(c.num_hidden_layers)
                                                        for n in per_layer}
    assert set(t) == want  # tied embeddings: no output.weight, llama.cpp reuses token_embd
    sd = model.state_dict()
    assert t["token_embd.weight"].shape == (c.vocab_size, c.hidden_size)
    np.testing.assert_array_equal(t["blk.1.ffn_down.weight"], sd["model.layers.1.mlp.down_proj.weight"].numpy())
    assert t["blk.0.attn_k.weight"].shape == (c.num_key_value_heads * c.head_dim, c.hidden_size)
    q = sd["model.layers.0.self_attn.q_proj.weight"].numpy()
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"], permute_rope_rows(q, c.num_attention_heads))
    assert not np.array_equal(t["blk.0.attn_q.weight"], q)
    assert {r.tensor_type for r in reader.tensors} == {gguf.GGMLQuantizationType.F32}


def _rope_neighbours(x, pos, theta):
    """llama.cpp's `llama` RoPE: rotate channels 2i and 2i+1 together. x: (T, heads, d)."""
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * freqs[None]  # (T, d/2)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return out


def _rope_neox(x, pos, theta):
    """llama.cpp's NEOX RoPE (qwen3): rotate channels i and i + d/2 together. x: (T, heads, d)."""
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * freqs[None]  # (T, d/2)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x0, x1 = x[..., :d // 2], x[..., d // 2:]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _swiglu(h, gate, up, down):
    g = h @ gate.T
    return ((g / (1 + np.exp(-g))) * (h @ up.T)) @ down.T


def _moe(h, t, b, f, arch):
    """llama.cpp's build_moe_ffn (src/llama-graph.cpp) as qwen3moe, bailingmoe and glm4moe call it: softmax over the
    router logits; top-k chosen on probs + exp_probs_b (glm4moe's selection bias) but weighted by the probs;
    renormalised (qwen3moe: always; the others: expert_weights_norm) by a sum clamped at 2^-14; scaled when
    expert_weights_scale is neither 0 nor 1; then the ungated shared expert (not in qwen3moe) is added."""
    gating = f.get(f"{arch}.expert_gating_func", 1)  # qwen3moe and bailingmoe hard-code softmax (1)
    assert gating == 1, "only softmax gating is modelled here"
    probs = _softmax(h @ t[b + "ffn_gate_inp.weight"].T)  # (T, n_expert)
    choose = probs + t.get(b + "exp_probs_b.bias", 0.0)
    top = np.argsort(-choose, axis=-1, kind="stable")[:, :f[f"{arch}.expert_used_count"]]  # (T, k)
    w = np.take_along_axis(probs, top, axis=-1)
    if arch == "qwen3moe" or f.get(f"{arch}.expert_weights_norm", False):
        w = w / np.maximum(w.sum(-1, keepdims=True), 6.103515625e-5)
    scale = f.get(f"{arch}.expert_weights_scale", 0.0)
    if scale not in (0.0, 1.0):
        w = w * scale
    gate, up, down = (t[f"{b}ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))  # (n_expert, out, in)
    out = np.zeros_like(h)
    for tok in range(len(h)):
        for e, we in zip(top[tok], w[tok]):
            out[tok] += we * _swiglu(h[tok:tok + 1], gate[e], up[e], down[e])[0]
    if arch != "qwen3moe":  # bailingmoe, glm4moe: build_ffn over the shared expert, no gate
        out += _swiglu(h, *(t[f"{b}ffn_{n}_shexp.weight"] for n in ("gate", "up", "down")))
    return out


ARCHS = ("llama", "qwen3", "bailingmoe", "qwen3moe", "glm4moe")


def gguf_forward(path, ids):
    """A forward pass from the GGUF file alone, written the way llama.cpp's graph for its architecture computes it
    (src/models/{llama,qwen3,bailingmoe,qwen3moe,glm4-moe}.cpp)."""
    reader = gguf.GGUFReader(str(path))
    f, t = fields(reader), {k: v.astype(np.float64) for k, v in tensors(reader).items()}
    arch = f["general.architecture"]
    assert arch in ARCHS
    nh, nkv = f[f"{arch}.attention.head_count"], f[f"{arch}.attention.head_count_kv"]
    hd = f.get(f"{arch}.attention.key_length", f[f"{arch}.embedding_length"] // nh)  # llama.cpp's default
    eps, theta = f[f"{arch}.attention.layer_norm_rms_epsilon"], f[f"{arch}.rope.freq_base"]
    rope = _rope_neighbours if arch in ("llama", "bailingmoe") else _rope_neox  # llama_model_rope_type
    qk_norm = arch in ("qwen3", "qwen3moe", "glm4moe")
    moe = f.get(f"{arch}.expert_count", 0) > 0

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    x = t["token_embd.weight"][ids]
    T, pos = len(ids), np.arange(len(ids), dtype=np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(f[f"{arch}.block_count"]):
        b = f"blk.{i}."
        h = rms(x, t[b + "attn_norm.weight"])
        q = (h @ t[b + "attn_q.weight"].T).reshape(T, nh, hd)
        k = (h @ t[b + "attn_k.weight"].T).reshape(T, nkv, hd)
        v = (h @ t[b + "attn_v.weight"].T).reshape(T, nkv, hd)
        if qk_norm:  # RMSNorm over each head's hd channels, one (hd,) weight for all heads
            q, k = rms(q, t[b + "attn_q_norm.weight"]), rms(k, t[b + "attn_k_norm.weight"])
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        p = _softmax(np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask)
        x = x + np.einsum("hqk,khd->qhd", p, v).reshape(T, -1) @ t[b + "attn_output.weight"].T
        h = rms(x, t[b + ("post_attention_norm" if arch == "glm4moe" else "ffn_norm") + ".weight"])
        if moe:
            x = x + _moe(h, t, b, f, arch)
        else:
            x = x + _swiglu(h, t[b + "ffn_gate.weight"], t[b + "ffn_up.weight"], t[b + "ffn_down.weight"])
    x = rms(x, t["output_norm.weight"])
    return x @ t.get("output.weight", t["token_embd.weight"]).T


def test_llama_cpp_style_forward_gives_our_logits(ckpt, exported):
    model, tok = load_checkpoint(ckpt)
    ids = tok.encode("Mira the baker lives in Tallow. 你好 " * 6)  # 60 positions
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].double().numpy()
    # (without the q/k row permutation the logits differ by ~6e-3 here)
    np.testing.assert_allclose(gguf_forward(exported, ids), ours, atol=1e-5, rtol=1e-5)


def test_untied_f16_and_yarn(tmp_path):
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    ckpt = make_checkpoint(tmp_path / "ckpt", tie_word_embeddings=False, rope_scaling=yarn)
    out = export_gguf(ckpt, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(out))
    f, t = fields(reader), {r.name: r for r in reader.tensors}
    assert "output.weight" in t and f["general.file_type"] == 1
    assert t["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert t["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay f32
    assert f["llama.rope.scaling.type"] == "yarn" and f["llama.rope.scaling.factor"] == 4.0
    assert f["llama.rope.scaling.original_context_length"] == 64
    model, tok = load_checkpoint(ckpt)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.lm_head.weight.half().float())
    np.testing.assert_array_equal(np.array(t["output.weight"].data).astype(np.float32),
                                  model.lm_head.weight.detach().numpy())


def test_lora_run_merged_and_errors(ckpt, tmp_path):
    lora, model = make_lora_run(ckpt, tmp_path / "lora")
    load_checkpoint(ckpt)[1].save_pretrained(lora)
    merge_lora(model)
    assert cli(["export", "gguf", str(lora), "--out", str(tmp_path / "x.gguf")]) == 2  # asks for --merge-lora
    assert not (tmp_path / "x.gguf").exists()
    out = export_gguf(lora, tmp_path / "m.gguf", merge_lora=True)
    t = tensors(gguf.GGUFReader(str(out)))
    np.testing.assert_allclose(t["blk.0.ffn_up.weight"], model.model.layers[0].mlp.up_proj.weight.detach().numpy(),
                               atol=1e-6)
    with pytest.raises(ValueError, match="dtype 'q8'"):
        export_gguf(ckpt, tmp_path / "q8.gguf", dtype="q8")
    assert not (tmp_path / "q8.gguf").exists() and not list(tmp_path.glob(".q8.gguf*"))


# -- minimind-3: llama.cpp's qwen3 ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def m3(tok):
    """A minimind-3-shaped model: q/k-norm, head_dim 24 (4 heads * 24 = 96 != hidden 64), eps 1e-6."""
    return random_model(small_config(qk_norm=True, head_dim=24, rms_norm_eps=1e-6, vocab_size=tok.vocab_size))


@pytest.fixture(scope="module")
def m3_gguf(m3, tok, tmp_path_factory):
    return export_gguf(m3, tmp_path_factory.mktemp("gguf_m3") / "m3.gguf", tokenizer=tok, name="m3")


def test_qwen3_metadata_and_tensors(m3, m3_gguf):
    c = m3.config
    reader = gguf.GGUFReader(str(m3_gguf))
    f, t = fields(reader), tensors(reader)
    assert f["general.architecture"] == "qwen3" and not any(k.startswith("llama.") for k in f)
    assert (f["qwen3.block_count"], f["qwen3.embedding_length"], f["qwen3.feed_forward_length"]) == (2, 64, 96)
    assert (f["qwen3.attention.head_count"], f["qwen3.attention.head_count_kv"]) == (4, 2)
    assert f["qwen3.attention.key_length"] == f["qwen3.attention.value_length"] == 24
    assert f["qwen3.rope.dimension_count"] == 24 and f["qwen3.context_length"] == 256
    assert f["qwen3.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f["qwen3.rope.freq_base"] == pytest.approx(c.rope_theta)
    per_layer = ["attn_norm", "ffn_norm", "attn_q", "attn_q_norm", "attn_k", "attn_k_norm", "attn_v", "attn_output",
                 "ffn_gate", "ffn_up", "ffn_down"]
    assert set(t) == {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in range(2)
                                                                      for n in per_layer}
    sd = m3.state_dict()
    assert t["blk.1.attn_q_norm.weight"].shape == (24,)
    np.testing.assert_array_equal(t["blk.1.attn_k_norm.weight"], sd["model.layers.1.self_attn.k_norm.weight"].numpy())
    # NEOX RoPE is our rotate_half: q/k rows unpermuted, (heads * head_dim, hidden)
    assert t["blk.0.attn_q.weight"].shape == (96, 64) and t["blk.0.attn_k.weight"].shape == (48, 64)
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"], sd["model.layers.0.self_attn.q_proj.weight"].numpy())
    np.testing.assert_array_equal(t["blk.0.attn_k.weight"], sd["model.layers.0.self_attn.k_proj.weight"].numpy())
    assert t["blk.0.attn_output.weight"].shape == (64, 96)
    types = {r.name: r.tensor_type for r in reader.tensors}
    assert types["blk.0.attn_q_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_qwen3_forward_and_greedy_give_ours(m3, m3_gguf, tok):
    ids = tok.encode("Mira the baker lives in Tallow. 你好 " * 6)  # 60 positions
    with torch.no_grad():
        ours = m3(torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(gguf_forward(m3_gguf, ids), ours, atol=1e-5, rtol=1e-5)
    # greedy: our KV-cached generate against the file's graph recomputed over the whole prefix each step
    prompt, new = ids[:12], 10
    with torch.no_grad():
        want = m3.generate(torch.tensor([prompt]), max_new_tokens=new)[0, len(prompt):].tolist()
    got = list(prompt)
    for _ in range(new):
        got.append(int(gguf_forward(m3_gguf, got)[-1].argmax()))
    assert got[len(prompt):] == want


def test_qwen3_f16(m3, tok, tmp_path):
    out = export_gguf(m3, tmp_path / "m3.gguf", tokenizer=tok, dtype="f16")
    reader = gguf.GGUFReader(str(out))
    f, types = fields(reader), {r.name: r.tensor_type for r in reader.tensors}
    assert f["general.architecture"] == "qwen3" and f["general.file_type"] == 1
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_q_norm.weight"] == types["blk.0.attn_k_norm.weight"] == gguf.GGMLQuantizationType.F32
    # the file computes exactly our model with its matrices rounded to f16 (norms kept f32)
    half = copy.deepcopy(m3)
    with torch.no_grad():
        for p in half.parameters():
            if p.dim() > 1:
                p.copy_(p.half().float())
        ids = tok.encode("Mira the baker likes honey. 你好")
        ours = half(torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(gguf_forward(out, ids), ours, atol=1e-5, rtol=1e-5)


def test_minimind3_preset_shapes(tok, tmp_path):
    config = MiniMindConfig.from_preset("minimind-3", num_hidden_layers=1, vocab_size=tok.vocab_size)
    model = random_model(config)
    out = export_gguf(model, tmp_path / "m3.gguf", tokenizer=tok)
    reader = gguf.GGUFReader(str(out))
    f, t = fields(reader), {r.name: r for r in reader.tensors}
    assert f["general.architecture"] == "qwen3"
    assert (f["qwen3.embedding_length"], f["qwen3.feed_forward_length"], f["qwen3.block_count"]) == (768, 2432, 1)
    assert (f["qwen3.attention.head_count"], f["qwen3.attention.head_count_kv"]) == (8, 4)
    assert f["qwen3.attention.key_length"] == f["qwen3.rope.dimension_count"] == 96
    assert f["qwen3.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    # GGUF lists shapes fastest dimension first (ggml's ne): llama.cpp's {n_embd, n_head * head_dim} etc.
    assert list(t["blk.0.attn_q.weight"].shape) == [768, 8 * 96]
    assert list(t["blk.0.attn_k.weight"].shape) == [768, 4 * 96]
    assert list(t["blk.0.attn_q_norm.weight"].shape) == list(t["blk.0.attn_k_norm.weight"].shape) == [96]
    assert list(t["blk.0.ffn_down.weight"].shape) == [2432, 768]
    ids = tok.encode("Mira the baker. 你好")
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(gguf_forward(out, ids), ours, atol=1e-5, rtol=1e-5)
