"""GGUF export: read back with gguf.GGUFReader (metadata, tokenizer, tensors, shapes), and a numpy forward
pass in llama.cpp's conventions that must give our logits: `llama` (neighbour-pair RoPE) for MiniMind2 and
`qwen3` (per-head q/k RMSNorm, then NEOX RoPE) for minimind-3; for MoE, `bailingmoe` (MiniMind2-MoE), `qwen3moe`
(minimind-3-moe) and `glm4moe` (other q/k-norm MoE models), with build_moe_ffn's routing. With llama-cpp-python
installed, the files also run in llama.cpp itself."""

import copy

import gguf
import numpy as np
import pytest
import torch
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
    for e in range(len(gate)):  # each expert on the tokens that chose it, times their weight for it
        rows = (top == e).any(-1)
        out[rows] += (w * (top == e)).sum(-1)[rows, None] * _swiglu(h[rows], gate[e], up[e], down[e])
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
    assert_greedy_matches(m3, m3_gguf, ids[:12])


def assert_greedy_matches(model, path, prompt, new=10):
    """Our KV-cached greedy generate against the file's graph recomputed over the whole prefix each step."""
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=new)[0, len(prompt):].tolist()
    got = list(prompt)
    for _ in range(new):
        got.append(int(gguf_forward(path, got)[-1].argmax()))
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


# -- MoE: bailingmoe (MiniMind2-MoE), qwen3moe (minimind-3-moe), glm4moe (other q/k-norm MoE models) ------

M3 = dict(qk_norm=True, head_dim=24, rms_norm_eps=1e-6)  # minimind-3's attention, small
M2_MOE = dict(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)  # minimind2-moe routing
M3_MOE = dict(M3, use_moe=True, n_routed_experts=4, n_shared_experts=0, num_experts_per_tok=1)  # minimind-3-moe
TEXT = "Mira the baker lives in Tallow. 你好 " * 4


def expected_names(arch, layers, untied=False):
    """Exactly the tensors llama.cpp's loader creates for the architecture (src/models/<arch>.cpp,
    load_arch_tensors): it refuses a file with any other tensor ("wrong number of tensors")."""
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp", "ffn_gate_exps",
                 "ffn_up_exps", "ffn_down_exps"]
    per_layer += {"bailingmoe": ["ffn_norm", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"],
                  "qwen3moe": ["ffn_norm", "attn_q_norm", "attn_k_norm"],
                  "glm4moe": ["post_attention_norm", "attn_q_norm", "attn_k_norm", "ffn_gate_shexp", "ffn_up_shexp",
                              "ffn_down_shexp"]}[arch]
    names = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in range(layers)
                                                         for n in per_layer}
    if arch == "glm4moe":
        names |= {f"blk.{i}.exp_probs_b.bias" for i in range(layers)}
    if untied or arch == "bailingmoe":  # bailingmoe's output.weight is required
        names.add("output.weight")
    return names


def ours(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def test_minimind2_moe_checkpoint_as_bailingmoe(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", **M2_MOE)  # the CLI route, on a checkpoint folder
    out = tmp_path / "moe.gguf"
    assert cli(["export", "gguf", str(ckpt), "--out", str(out)]) == 0
    model, tok = load_checkpoint(ckpt)
    c = model.config
    reader = gguf.GGUFReader(str(out))
    f, t = fields(reader), tensors(reader)
    assert f["general.architecture"] == "bailingmoe" and not any(k.startswith("llama.") for k in f)
    a = "bailingmoe."
    assert (f[a + "expert_count"], f[a + "expert_used_count"], f[a + "expert_shared_count"]) == (4, 2, 1)
    assert f[a + "expert_feed_forward_length"] == c.moe_intermediate_size == 128
    assert f[a + "expert_weights_norm"] is True and f[a + "leading_dense_block_count"] == 0
    assert f[a + "expert_weights_scale"] == 1.0  # build_moe_ffn scales by neither 0 nor 1 only
    assert f[a + "rope.dimension_count"] == c.head_dim and a + "attention.key_length" not in f
    assert f["tokenizer.ggml.pre"] == "gpt-2" and f["tokenizer.ggml.add_bos_token"] is False
    assert set(t) == expected_names("bailingmoe", 2)
    sd = model.state_dict()
    np.testing.assert_array_equal(t["output.weight"], t["token_embd.weight"])  # tied: written twice
    # normal RoPE, as llama: q/k rows permuted per head
    np.testing.assert_array_equal(t["blk.0.attn_k.weight"], permute_rope_rows(
        sd["model.layers.0.self_attn.k_proj.weight"].numpy(), c.num_key_value_heads))
    # experts stacked (n_expert, out, in); GGUF lists llama.cpp's ne: {n_embd, n_ff_exp, n_expert} etc.
    shapes = {r.name: list(r.shape) for r in reader.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == shapes["blk.0.ffn_up_exps.weight"] == [64, 128, 4]
    assert shapes["blk.0.ffn_down_exps.weight"] == [128, 64, 4] and shapes["blk.0.ffn_gate_inp.weight"] == [64, 4]
    assert shapes["blk.0.ffn_gate_shexp.weight"] == [64, 128] and shapes["blk.0.ffn_down_shexp.weight"] == [128, 64]
    for e in range(4):
        np.testing.assert_array_equal(t["blk.1.ffn_down_exps.weight"][e],
                                      sd[f"model.layers.1.mlp.experts.{e}.down_proj.weight"].numpy())
    np.testing.assert_array_equal(t["blk.1.ffn_up_shexp.weight"],
                                  sd["model.layers.1.mlp.shared_experts.0.up_proj.weight"].numpy())
    np.testing.assert_array_equal(t["blk.1.ffn_gate_inp.weight"], sd["model.layers.1.mlp.gate.weight"].numpy())
    ids = tok.encode(TEXT)
    np.testing.assert_allclose(gguf_forward(out, ids), ours(model, ids), atol=1e-5, rtol=1e-5)
    assert_greedy_matches(model, out, ids[:12])
    # what llama.cpp's qwen2moe / deepseek would compute (top-2 weights not renormalised) is far off
    for layer in model.model.layers:
        layer.mlp.norm_topk_prob = False
    assert np.abs(gguf_forward(out, ids) - ours(model, ids)).max() > 1e-2


@pytest.mark.parametrize("routing", [dict(n_shared_experts=0), dict(n_shared_experts=2),
                                     dict(num_experts_per_tok=1, norm_topk_prob=False),
                                     dict(num_experts_per_tok=3, norm_topk_prob=False, tie_word_embeddings=False)],
                         ids=["no-shared", "two-shared", "top1-unnormalised", "top3-unnormalised-untied"])
def test_bailingmoe_variants(tok, tmp_path, routing):
    model = random_model(small_config(**{**M2_MOE, **routing}, vocab_size=tok.vocab_size))
    c = model.config
    out = export_gguf(model, tmp_path / "moe.gguf", tokenizer=tok)
    f, t = fields(gguf.GGUFReader(str(out))), tensors(gguf.GGUFReader(str(out)))
    assert f["general.architecture"] == "bailingmoe"
    assert f["bailingmoe.expert_weights_norm"] is c.norm_topk_prob
    assert f["bailingmoe.expert_used_count"] == c.num_experts_per_tok
    assert f["bailingmoe.expert_shared_count"] == max(c.n_shared_experts, 1)
    assert set(t) == expected_names("bailingmoe", 2)
    width = c.moe_intermediate_size
    assert t["blk.0.ffn_gate_shexp.weight"].shape == (width * max(c.n_shared_experts, 1), 64)
    if not c.n_shared_experts:  # one zero expert: adds exactly 0
        assert not t["blk.0.ffn_down_shexp.weight"].any()
    if not c.tie_word_embeddings:
        np.testing.assert_array_equal(t["output.weight"], model.lm_head.weight.detach().numpy())
    ids = tok.encode(TEXT)
    np.testing.assert_allclose(gguf_forward(out, ids), ours(model, ids), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def m3moe(tok):
    return random_model(small_config(**M3_MOE, vocab_size=tok.vocab_size))


@pytest.fixture(scope="module")
def m3moe_gguf(m3moe, tok, tmp_path_factory):
    return export_gguf(m3moe, tmp_path_factory.mktemp("gguf_m3moe") / "m3moe.gguf", tokenizer=tok)


def test_minimind3_moe_as_qwen3moe(m3moe, m3moe_gguf, tok):
    reader = gguf.GGUFReader(str(m3moe_gguf))
    f, t = fields(reader), tensors(reader)
    a = "qwen3moe."
    assert f["general.architecture"] == "qwen3moe"
    assert (f[a + "expert_count"], f[a + "expert_used_count"], f[a + "expert_feed_forward_length"]) == (4, 1, 96)
    assert a + "expert_shared_count" not in f and a + "expert_weights_norm" not in f  # fixed in its graph
    assert f[a + "attention.key_length"] == f[a + "rope.dimension_count"] == 24
    assert set(t) == expected_names("qwen3moe", 2)
    sd = m3moe.state_dict()
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"], sd["model.layers.0.self_attn.q_proj.weight"].numpy())
    np.testing.assert_array_equal(t["blk.1.ffn_gate_exps.weight"][3],
                                  sd["model.layers.1.mlp.experts.3.gate_proj.weight"].numpy())
    types = {r.name: r.tensor_type for r in reader.tensors}
    assert types["blk.0.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32
    ids = tok.encode(TEXT)
    np.testing.assert_allclose(gguf_forward(m3moe_gguf, ids), ours(m3moe, ids), atol=1e-5, rtol=1e-5)
    assert_greedy_matches(m3moe, m3moe_gguf, ids[:12])


@pytest.mark.parametrize("routing", [dict(n_shared_experts=1, num_experts_per_tok=2),
                                     dict(num_experts_per_tok=2, norm_topk_prob=False)],
                         ids=["shared-top2", "top2-unnormalised"])
def test_other_qk_norm_moe_as_glm4moe(tok, tmp_path, routing):
    model = random_model(small_config(**{**M3_MOE, **routing}, vocab_size=tok.vocab_size))
    c = model.config
    out = export_gguf(model, tmp_path / "moe.gguf", tokenizer=tok)
    f, t = fields(gguf.GGUFReader(str(out))), tensors(gguf.GGUFReader(str(out)))
    a = "glm4moe."
    assert f["general.architecture"] == "glm4moe"
    assert f[a + "expert_gating_func"] == gguf.ExpertGatingFuncType.SOFTMAX  # glm4moe's default is sigmoid
    assert f[a + "expert_weights_norm"] is c.norm_topk_prob and f[a + "expert_shared_count"] == 1
    assert f[a + "rope.dimension_count"] == 24  # all of the head turns (GLM itself turns half)
    assert set(t) == expected_names("glm4moe", 2)
    assert not t["blk.0.exp_probs_b.bias"].any()
    np.testing.assert_array_equal(t["blk.1.post_attention_norm.weight"],
                                  model.model.layers[1].post_attention_layernorm.weight.detach().numpy())
    ids = tok.encode(TEXT)
    np.testing.assert_allclose(gguf_forward(out, ids), ours(model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [M2_MOE, M3_MOE], ids=["bailingmoe", "qwen3moe"])
def test_moe_f16(tok, tmp_path, config):
    model = random_model(small_config(**config, vocab_size=tok.vocab_size))
    out = export_gguf(model, tmp_path / "moe.gguf", tokenizer=tok, dtype="f16")
    reader = gguf.GGUFReader(str(out))
    f, types = fields(reader), {r.name: r.tensor_type for r in reader.tensors}
    assert f["general.file_type"] == 1
    F16, F32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
    assert types["blk.0.ffn_gate_exps.weight"] == types["blk.0.ffn_down_exps.weight"] == F16
    assert types["blk.0.ffn_gate_inp.weight"] == types["blk.0.ffn_norm.weight"] == F32  # the router stays f32
    # the file computes exactly our model with its matrices, but not the router, rounded to f16
    half = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in half.named_parameters():
            if p.dim() > 1 and not name.endswith("mlp.gate.weight"):
                p.copy_(p.half().float())
    ids = tok.encode(TEXT)
    np.testing.assert_allclose(gguf_forward(out, ids), ours(half, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset,arch", [("minimind2-moe", "bailingmoe"), ("minimind-3-moe", "qwen3moe")])
def test_moe_preset_shapes(tok, tmp_path, preset, arch):
    model = random_model(MiniMindConfig.from_preset(preset, num_hidden_layers=1, vocab_size=tok.vocab_size))
    with torch.no_grad():  # the 0.1 weights of random_model saturate a 640-wide model (as in test_export)
        for p in model.parameters():
            p.mul_(0.3) if p.dim() > 1 else None
    c = model.config
    out = export_gguf(model, tmp_path / "moe.gguf", tokenizer=tok)
    reader = gguf.GGUFReader(str(out))
    f, shapes = fields(reader), {r.name: list(r.shape) for r in reader.tensors}
    assert f["general.architecture"] == arch
    assert set(shapes) == expected_names(arch, 1)
    E, H, W = c.n_routed_experts, c.hidden_size, c.moe_intermediate_size
    assert (E, H, W) == ((4, 640, 1728) if preset == "minimind2-moe" else (4, 768, 2432))
    assert shapes["blk.0.ffn_gate_exps.weight"] == [H, W, E] and shapes["blk.0.ffn_down_exps.weight"] == [W, H, E]
    assert f[f"{arch}.expert_used_count"] == c.num_experts_per_tok == (2 if arch == "bailingmoe" else 1)
    ids = tok.encode("Mira the baker. 你好")
    np.testing.assert_allclose(gguf_forward(out, ids), ours(model, ids), atol=1e-5, rtol=1e-5)


# -- llama.cpp itself: runs only where llama-cpp-python is installed -----------------------------------------

PROMPTS = ["Mira the baker lives in Tallow", "你好，我是一个小模型。", "3 plus 4 is",
           "Mira likes honey. 2 plus 5 is 7.", "<think>Let me add the numbers.</think> The answer is"]


def llama_cpp_greedy(path, prompts, new=32):
    """llama.cpp's greedy continuation of each prompt (token ids in, KV-cached decoding, f32 KV cache), and its
    logits at every position of prompt + continuation."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_threads=2, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    runs = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        for _ in range(new):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        runs.append(([int(i) for i in llm.input_ids[:llm.n_tokens]], np.array(llm.scores[:llm.n_tokens], np.float64)))
    return llm, runs


@pytest.mark.parametrize("preset,overrides,arch", [
    ("minimind2", {}, "llama"), ("minimind-3", {}, "qwen3"), ("minimind2-moe", {}, "bailingmoe"),
    ("minimind-3-moe", {}, "qwen3moe"),
    ("minimind2-moe", dict(n_shared_experts=0, num_experts_per_tok=1, norm_topk_prob=False), "bailingmoe"),
    ("minimind-3-moe", dict(n_shared_experts=1, num_experts_per_tok=2), "glm4moe")],
    ids=["minimind2", "minimind-3", "minimind2-moe", "minimind-3-moe", "m2moe-top1-unshared", "m3moe-shared-top2"])
def test_llama_cpp_computes_our_model(tok, tmp_path, preset, overrides, arch):
    pytest.importorskip("llama_cpp")
    model = random_model(MiniMindConfig.from_preset(preset, num_hidden_layers=2, vocab_size=tok.vocab_size,
                                                    **overrides))
    with torch.no_grad():  # weights of a trained model's size: 0.1 saturates a 640-wide model
        for p in model.parameters():
            p.mul_(0.3) if p.dim() > 1 else None
    out = export_gguf(model, tmp_path / f"{preset}.gguf", tokenizer=tok)
    assert fields(gguf.GGUFReader(str(out)))["general.architecture"] == arch
    prompts = [tok.encode(text) for text in PROMPTS]
    llm, runs = llama_cpp_greedy(out, prompts)
    same, worst = 0, 0.0
    for text, ids, (seq, logits) in zip(PROMPTS, prompts, runs):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids  # the file's vocabulary splits as ours
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=32)[0, len(ids):].tolist()
        same += sum(a == b for a, b in zip(seq[len(ids):], want))
        worst = max(worst, float(np.abs(logits - ours(model, seq)).max()))  # on llama.cpp's own tokens
    print(f"\n{preset} ({arch}): {same}/{32 * len(PROMPTS)} greedy tokens equal, max |logit difference| {worst:.1e}")
    assert same == 32 * len(PROMPTS) and worst < 1e-3
