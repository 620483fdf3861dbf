"""Exported checkpoints open in transformers without remote code and give the same logits."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minimind import MiniMindForCausalLM
from minimind.cli import main as cli
from minimind.export import export_hf

from conftest import random_model, small_config


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
