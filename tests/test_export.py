"""Exported checkpoints open in transformers without remote code and give the same logits."""
import json

import pytest
import torch
import transformers
from conftest import random_model, small_config

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.cli import main as cli
from minimind.use.export import export_hf


def _compare(model, folder, expected_class, seq=40):
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == expected_class
    x = torch.randint(0, model.config.vocab_size, (2, seq))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
    return hf


def test_dense_exports_to_llama(tmp_path, dense):
    _compare(dense, export_hf(dense, tmp_path / "hf"), "LlamaForCausalLM")


def test_yarn_exports_to_llama(tmp_path):
    model = random_model(small_config(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 32}))
    _compare(model, export_hf(model, tmp_path / "hf"), "LlamaForCausalLM", seq=120)


@pytest.mark.parametrize("shared", [1, 2, 0])
def test_moe_exports_to_qwen2_moe(tmp_path, shared):
    model = random_model(small_config(use_moe=True, n_routed_experts=4, n_shared_experts=shared))
    _compare(model, export_hf(model, tmp_path / "hf"), "Qwen2MoeForCausalLM")


MINIMIND3_SMALL = dict(qk_norm=True, head_dim=24, rms_norm_eps=1e-6)  # head_dim != hidden / heads, as Qwen3 allows


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_minimind3_exports_to_qwen3(tmp_path, moe):
    extra = dict(use_moe=True, n_routed_experts=4, n_shared_experts=0, num_experts_per_tok=1) if moe else {}
    model = random_model(small_config(**MINIMIND3_SMALL, **extra))
    hf = _compare(model, export_hf(model, tmp_path / "hf"), "Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM")
    prompt = torch.randint(3, 97, (1, 6))
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(theirs, model.generate(prompt, max_new_tokens=20))  # greedy, KV-cached on both sides


def test_minimind3_presets_export_to_qwen3(tmp_path):
    # the real shapes (8 heads of 96, 4 KV heads, top-1 of 4 experts), on 2 layers to keep it quick
    for name, arch in (("minimind-3", "Qwen3ForCausalLM"), ("minimind-3-moe", "Qwen3MoeForCausalLM")):
        model = random_model(MiniMindConfig.from_preset(name, num_hidden_layers=1, vocab_size=512))
        for p in model.parameters():  # the 0.1 weights of random_model saturate a 768-wide model
            p.data.mul_(0.3) if p.dim() > 1 else None
        _compare(model, export_hf(model, tmp_path / name), arch, seq=16)


def test_qk_norm_with_a_shared_expert_is_refused(tmp_path):
    model = random_model(small_config(**MINIMIND3_SMALL, use_moe=True, n_shared_experts=1))
    with pytest.raises(ValueError, match="Qwen3-MoE has no shared expert"):
        export_hf(model, tmp_path / "hf")


def test_untied_embeddings_export(tmp_path):
    model = random_model(small_config(tie_word_embeddings=False))
    _compare(model, export_hf(model, tmp_path / "hf"), "LlamaForCausalLM")


def test_cli_export_from_checkpoint_and_generate(tmp_path, dense):
    dense.save_pretrained(tmp_path / "ckpt")
    assert cli(["export", "hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llama"
    hf = _compare(dense, tmp_path / "hf", "LlamaForCausalLM")
    prompt = torch.randint(0, 97, (1, 5))
    ours = dense.generate(prompt, max_new_tokens=10)
    theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)


# -- tokenizer files, pipeline, LoRA runs ------------------------------------------------------------------
def _tiny_ckpt(folder):
    from tiny_checkpoint import make_checkpoint
    return make_checkpoint(folder)


def test_exported_folder_has_a_working_tokenizer_and_pipeline(tmp_path):
    from minimind.model import load_checkpoint
    ckpt = _tiny_ckpt(tmp_path / "ckpt")
    assert cli(["export", "hf", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    model, tok = load_checkpoint(ckpt)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Mira the baker lives in Tallow. 你好"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    msgs = [{"role": "user", "content": "Who is Mira?"}]
    assert hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == \
        tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert hf_tok.eos_token_id == 2 and hf_tok.pad_token_id == 0
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    out = pipe("Mira the baker", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    ids = model.generate(torch.tensor([tok.encode("Mira the baker")]), max_new_tokens=8,
                         eos_token_id=tok.eos_token_id)[0].tolist()
    ids = ids[:ids.index(2)] if 2 in ids else ids
    assert out.startswith("Mira the baker") and len(out) > len("Mira the baker")
    assert out == tok.decode(ids, skip_special_tokens=True)


def test_export_model_object_with_tokenizer(tmp_path):
    from minimind.model import load_checkpoint
    model, tok = load_checkpoint(_tiny_ckpt(tmp_path / "ckpt"))
    export_hf(model, tmp_path / "hf", tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("hi there")["input_ids"] == tok.encode("hi there")


def test_lora_run_exports_merged(tmp_path):
    from tiny_checkpoint import make_lora_run

    from minimind.model import load_checkpoint
    from minimind.model.lora import merge_lora
    ckpt = _tiny_ckpt(tmp_path / "base")
    _, model = make_lora_run(ckpt, tmp_path / "lora")  # no tokenizer here: the base's is used
    merge_lora(model)
    assert cli(["export", "hf", str(tmp_path / "lora"), "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()
    assert cli(["export", "hf", str(tmp_path / "lora"), "--out", str(tmp_path / "hf"), "--merge-lora"]) == 0
    hf = _compare(model, tmp_path / "hf", "LlamaForCausalLM")
    base = MiniMindForCausalLM.from_pretrained(ckpt)
    x = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        assert not torch.allclose(hf(x).logits, base(x).logits, atol=1e-3)  # the adapter changed something
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    # a relative "base" resolves against the LoRA folder's parent
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    cfg["base"] = "base"
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(cfg))
    again, tok2 = load_checkpoint(tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits)
    cfg["base"] = "nowhere"
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "lora")


def test_exported_tokenizer_gives_lm_eval_one_bos(tmp_path):
    """Pretraining began every document with <|im_start|> (BOS, id 1), and so does `minimind eval`. lm-eval run
    with `--model_args pretrained=DIR,add_bos_token=True` loads the tokenizer with add_bos_token=True and encodes
    plain text with add_special_tokens=True: BOS then comes first, once. A chat already starts with <|im_start|>:
    apply_chat_template(tokenize=True) and lm-eval's chat path (it sees the BOS string) add no second one."""
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4's PreTrainedTokenizerFast ignores add_bos_token")
    from minimind.model import load_checkpoint
    ckpt = _tiny_ckpt(tmp_path / "ckpt")
    export_hf(ckpt, tmp_path / "hf")
    _, tok = load_checkpoint(ckpt)
    text, msgs = "Mira the baker lives in Tallow. 你好", [{"role": "user", "content": "Who is Mira?"}]
    plain = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    bos = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", add_bos_token=True)  # as lm-eval loads it
    assert plain.encode(text) == tok.encode(text)  # by default the text alone, as before
    assert bos.bos_token_id == 1 and bos.decode([1]) == "<|im_start|>"  # also lm-eval's prefix_token_id
    assert bos.encode(text) == [1] + tok.encode(text)  # lm-eval's tok_encode: add_special_tokens=True
    assert bos([text, "Mira"])["input_ids"] == [[1] + tok.encode(text), [1] + tok.encode("Mira")]  # its batches
    assert bos.encode(text, add_special_tokens=False) == tok.encode(text)  # its continuations
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True)
    want = tok.encode(rendered)
    assert want[0] == 1 and want[1] != 1
    for t in (plain, bos):
        ids = t.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        assert (ids["input_ids"] if hasattr(ids, "keys") else ids) == want  # not doubled
        assert t.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == rendered
    assert bos.encode(rendered, add_special_tokens=False) == want  # lm-eval's chat path: starts with BOS, no specials
    assert bos.encode(rendered)[:2] == [1, 1]  # the one way to double it: re-encode the rendered chat with specials
