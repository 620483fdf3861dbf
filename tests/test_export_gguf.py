"""GGUF export: read back with gguf.GGUFReader (metadata, tokenizer, tensors, shapes), and a numpy forward
pass in llama.cpp's conventions (its tensor names, neighbour-pair RoPE) that must give our logits."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from tiny_checkpoint import make_checkpoint, make_lora_run

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


def gguf_forward(path, ids):
    """A llama forward pass from the GGUF file alone, written the way llama.cpp computes it."""
    reader = gguf.GGUFReader(str(path))
    f, t = fields(reader), {k: v.astype(np.float64) for k, v in tensors(reader).items()}
    nh, nkv = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    eps, theta = f["llama.attention.layer_norm_rms_epsilon"], f["llama.rope.freq_base"]

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    x = t["token_embd.weight"][ids]
    T, pos = len(ids), np.arange(len(ids), dtype=np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(f["llama.block_count"]):
        b = f"blk.{i}."
        h = rms(x, t[b + "attn_norm.weight"])
        q = (h @ t[b + "attn_q.weight"].T).reshape(T, nh, -1)
        k = (h @ t[b + "attn_k.weight"].T).reshape(T, nkv, -1)
        v = (h @ t[b + "attn_v.weight"].T).reshape(T, nkv, -1)
        q, k = _rope_neighbours(q, pos, theta), _rope_neighbours(k, pos, theta)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1]) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", p, v).reshape(T, -1) @ t[b + "attn_output.weight"].T
        h = rms(x, t[b + "ffn_norm.weight"])
        g = h @ t[b + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ t[b + "ffn_up.weight"].T)) @ t[b + "ffn_down.weight"].T
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
    moe = make_checkpoint(tmp_path / "moe", use_moe=True)
    with pytest.raises(ValueError, match="dense models"):
        export_gguf(moe, tmp_path / "moe.gguf")
    assert not (tmp_path / "moe.gguf").exists() and not list(tmp_path.glob(".moe.gguf*"))
