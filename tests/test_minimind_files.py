"""Files written by MiniMind's own code open here and give MiniMind's numbers.

MiniMind's model code (minimind/use/minimind_code, both generations, Apache-2.0) builds each model; its
config.json is written by its own config class, its weights as its trainer saves them (fp16 `.pth`) and as a
transformers folder. Our model must load them through from_pretrained and `minimind import` and give the
logits MiniMind's forward gives.
"""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import minimind.data.download as dl
import minimind.use
from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.cli import main as cli
from minimind.model.minimind_format import config_fields
from minimind.use.minimind_import import import_pth

CODE = Path(minimind.use.__file__).parent / "minimind_code"  # shipped with the package: bench times it too

# our preset -> (MiniMind's model file, its config arguments); 2 layers keep it quick, the rest is the real shape
GENERATIONS = {
    "minimind2-small": ("minimind2_model", dict(hidden_size=512)),
    "minimind2-moe": ("minimind2_model", dict(hidden_size=640, use_moe=True)),
    "minimind-3": ("minimind3_model", dict(hidden_size=768)),
    "minimind-3-moe": ("minimind3_model", dict(hidden_size=768, use_moe=True)),
}
ARCHITECTURE = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                "rms_norm_eps", "rope_theta", "qk_norm", "use_moe", "tie_word_embeddings", "vocab_size")
MOE = ("moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "norm_topk_prob")


def same_architecture(ours, preset):
    expected = MiniMindConfig.from_preset(preset, num_hidden_layers=2)
    for field in ARCHITECTURE + (MOE if expected.use_moe else ()):
        assert getattr(ours, field) == getattr(expected, field), field


def minimind_code(name):
    spec = importlib.util.spec_from_file_location(name, CODE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def their_model(preset, layers=2, seed=0):
    """MiniMind's own model for `preset`, with weights large enough for differences to show."""
    code, kwargs = GENERATIONS[preset]
    mm = minimind_code(code)
    torch.manual_seed(seed)
    model = mm.MiniMindForCausalLM(mm.MiniMindConfig(num_hidden_layers=layers, **kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.05) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def write_folder(model, folder, weights="model.safetensors"):
    """A transformers folder as MiniMind's code writes it: its config class's config.json, its weight names."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    if weights.endswith(".safetensors"):
        save_file(state, folder / weights)
    else:
        torch.save(state, folder / weights)
    return folder


def stored_dtypes(folder):
    from safetensors.torch import load_file
    return {t.dtype for t in load_file(folder / "model.safetensors").values()}


def their_logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("preset", list(GENERATIONS))
def test_minimind_folder_loads_with_its_config_mapped(tmp_path, preset):
    theirs = their_model(preset)
    folder = write_folder(theirs, tmp_path / preset)
    assert "flash_attn" in json.loads((folder / "config.json").read_text())  # MiniMind's own keys
    ours = MiniMindForCausalLM.from_pretrained(folder).eval()
    same_architecture(ours.config, preset)
    x = torch.randint(0, 6400, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, their_logits(theirs, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", list(GENERATIONS))
def test_minimind_fp16_pth_imports(tmp_path, preset):
    theirs = their_model(preset)
    pth = tmp_path / "full_sft.pth"
    torch.save({k: v.half() for k, v in theirs.state_dict().items()}, pth)  # as MiniMind's trainers save
    out = import_pth(pth, tmp_path / "imported")
    assert stored_dtypes(out) == {torch.float16}  # kept as MiniMind stored it
    ours = MiniMindForCausalLM.from_pretrained(out).eval()  # and loaded as float32, unless asked otherwise
    same_architecture(ours.config, preset)
    with torch.no_grad():  # MiniMind's model with the same fp16-rounded weights, computed in float32
        theirs.load_state_dict({k: v.half().float() for k, v in theirs.state_dict().items()})
    x = torch.randint(0, 6400, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours.float()(x).logits, their_logits(theirs, x), rtol=1e-4, atol=1e-4)


def test_pytorch_model_bin_folder_and_load_checkpoint(tmp_path):
    theirs = their_model("minimind-3")
    folder = write_folder(theirs, tmp_path / "mm3", weights="pytorch_model.bin")
    ours = MiniMindForCausalLM.from_pretrained(folder).eval()
    x = torch.randint(0, 6400, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, their_logits(theirs, x), rtol=1e-4, atol=1e-4)


def test_import_with_a_preset_checks_the_shapes(tmp_path, capsys):
    pth = tmp_path / "full_sft_768.pth"
    torch.save({k: v.half() for k, v in their_model("minimind-3", layers=1).state_dict().items()}, pth)
    assert cli(["import", str(pth), "--out", str(tmp_path / "a"), "--preset", "minimind2-small"]) == 2
    err = capsys.readouterr().err
    assert "as preset minimind2-small" in err and "shape" in err
    assert not (tmp_path / "a" / "model.safetensors").exists()
    assert cli(["import", str(pth), "--out", str(tmp_path / "b"), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "q/k-norm (minimind-3)" in out and "heads 8/4 kv of 96" in out
    assert stored_dtypes(tmp_path / "b") == {torch.float32}


def test_import_refuses_what_is_not_a_minimind_state_dict(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not look like a MiniMind model"):
        import_pth(tmp_path / "other.pth", tmp_path / "out")
    torch.save({"fn": print}, tmp_path / "code.pth")  # a pickle that would run code: never unpickled
    with pytest.raises(ValueError, match="weights_only=True"):
        import_pth(tmp_path / "code.pth", tmp_path / "out")


def test_minimind_keys_that_change_the_maths_are_refused_by_name():
    base = {"model_type": "minimind", "flash_attn": True, "hidden_size": 64, "num_attention_heads": 4}
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        MiniMindConfig.from_dict({**base, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="scoring_func='sigmoid'"):
        MiniMindConfig.from_dict({**base, "scoring_func": "sigmoid"})
    # generic transformers keys are ignored; our own configs stay strict about unknown fields
    generic = {"output_attentions": False, "chunk_size_feed_forward": 0}
    assert MiniMindConfig.from_dict({**base, **generic}).hidden_size == 64
    with pytest.raises(ValueError, match="unknown fields"):
        MiniMindConfig.from_dict({"hidden_size": 64, "hiden_layers": 3})


def test_minimind2_top1_is_not_renormalised():
    # MiniMind2's router renormalised only for top-k > 1; minimind-3's (and ours) always
    fields = config_fields({"model_type": "minimind", "flash_attn": True, "use_moe": True, "num_experts_per_tok": 1})
    assert fields["norm_topk_prob"] is False
    yarn = config_fields({"model_type": "minimind", "flash_attn": True, "inference_rope_scaling": True,
                          "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 2048,
                                           "beta_fast": 32, "beta_slow": 1, "attention_factor": 1.0}})
    assert yarn["rope_scaling"]["rope_type"] == "yarn" and yarn["rope_scaling"]["factor"] == 16


def test_hub_id_downloads_once_and_fails_offline_with_the_manual_route(tmp_path, monkeypatch):
    theirs = their_model("minimind2-small", layers=1)
    folder = write_folder(theirs, tmp_path / "snapshot")
    calls = []
    monkeypatch.setattr(dl, "_offline_reason", lambda: None)
    monkeypatch.setattr(dl, "_hub_snapshot", lambda repo, revision=None: calls.append(repo) or str(folder))
    model = MiniMindForCausalLM.from_pretrained("jingyaogong/MiniMind2-Small")
    assert calls == ["jingyaogong/MiniMind2-Small"] and model.config.num_hidden_layers == 1
    monkeypatch.setattr(dl, "_offline_reason", lambda: "HF_HUB_OFFLINE is set")
    with pytest.raises(dl.DownloadError, match=r"jingyaogong/minimind-3.*\n.*hf download jingyaogong/minimind-3"):
        MiniMindForCausalLM.from_pretrained("jingyaogong/minimind-3")
    with pytest.raises(FileNotFoundError, match="not found"):  # a relative path is never taken for a hub id
        MiniMindForCausalLM.from_pretrained(str(tmp_path / "no" / "such"))


def test_load_checkpoint_brings_minimind3s_tokenizer_and_generates_as_minimind(tmp_path):
    import shutil

    from minimind.model import load_checkpoint
    from minimind.use.chat import ChatSession
    theirs = their_model("minimind-3", layers=1)
    folder = write_folder(theirs, tmp_path / "minimind-3")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # as MiniMind publishes it: the tokenizer beside
        shutil.copyfile(Path(__file__).parent / "fixtures" / "minimind_tokenizers" / "minimind3" / name, folder / name)
    model, tok = load_checkpoint(folder)
    assert tok.template == "minimind3"
    prompt = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off, as MiniMind's default
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        expected = theirs.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert torch.equal(model.generate(ids, max_new_tokens=12), expected)  # greedy: MiniMind's own tokens
    reply = ChatSession(model, tok, temperature=0, max_new_tokens=8).ask("你好")
    assert isinstance(reply, str)


def test_minimind_rope_scaling_is_read_from_its_own_config_and_gives_our_yarn():
    from minimind.model.rope import inv_freq_for
    from minimind.use.bench_minimind_code import minimind_rope_scaling
    scaling = minimind_rope_scaling()
    assert scaling["attention_factor"] == 1.0 and scaling["factor"] == 16  # MiniMind: YaRN without the paper's factor
    config = MiniMindConfig.from_preset("tiny", rope_scaling=scaling, max_position_embeddings=32768)
    assert inv_freq_for(config)[1] == 1.0
    paper = {k: v for k, v in scaling.items() if k != "attention_factor"}
    config = MiniMindConfig.from_preset("tiny", rope_scaling=paper, max_position_embeddings=32768)
    assert inv_freq_for(config)[1] == pytest.approx(0.1 * math.log(16) + 1)
