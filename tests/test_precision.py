"""Every stage trains under autocast on the CPU: bf16 (and fp16 with a grad scaler) losses of the first steps
agree with float32 within bf16's precision, and pretraining and SFT under torch.compile agree with eager."""
import json
import math

import pytest
import torch
from course_helpers import course

from minimind.train import STAGES, build_model, load_tokenizer, read_metrics, train_stage

COMMON = dict(max_steps=1, batch_size=2, seq_len=64, device="cpu", progress=False, log_every=1, seed=0)
OPTIONS = {"lora": dict(lora_rank=4), "grpo": dict(group_size=2, max_new_tokens=6),
           "ppo": dict(max_new_tokens=6), "spo": dict(max_new_tokens=6),
           "agent": dict(group_size=2, max_new_tokens=6, max_turns=2)}
DATA = {"pretrain": "pretrain", "sft": "sft", "reason": "reason", "lora": "lora", "distill": "sft", "dpo": "dpo",
        "reward": "dpo", "ppo": "rl", "grpo": "rl", "spo": "rl", "agent": "rl"}


@pytest.fixture(scope="module")
def tool_tokenizer(tmp_path_factory):
    """A course tokenizer with minimind-3's template (the agent stage needs tools in its template)."""
    from minimind.data.records import iter_texts
    from minimind.data.tokenizer import train_tokenizer
    out = tmp_path_factory.mktemp("tool_tok")
    train_tokenizer(list(iter_texts([course()["pretrain"]]))[:2000], vocab_size=600,
                    template="minimind3").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random tiny model saved as a checkpoint: the distillation teacher."""
    paths = course()
    out = tmp_path_factory.mktemp("teacher")
    train_stage("pretrain", out, data=paths["pretrain"], tokenizer=paths["tokenizer"], **COMMON)
    return out


def losses(stage, out, teacher, tool_tokenizer=None, layers=None, **extra):
    """The loss of each step of a short run of `stage` (tiny preset, or `layers` of it; course corpus)."""
    paths = course()
    tokenizer = tool_tokenizer if stage == "agent" else paths["tokenizer"]
    if layers:
        torch.manual_seed(0)
        extra["model"] = build_model("tiny", load_tokenizer(tokenizer), num_hidden_layers=layers)
    train_stage(stage, out, data=paths[DATA[stage]], tokenizer=tokenizer, preset="tiny",
                teacher=teacher if stage == "distill" else None, stage_kwargs=OPTIONS.get(stage),
                **{**COMMON, **extra})
    values = [r["loss"] for r in read_metrics(out)]
    assert all(math.isfinite(v) for v in values), values
    return values


def test_every_stage_is_covered():
    assert set(DATA) == set(STAGES), "a new stage needs a precision test: add it to DATA"


@pytest.mark.parametrize("stage", sorted(DATA))
def test_bf16_first_steps_match_float32(stage, tmp_path, teacher, tool_tokenizer):
    # two steps: the second starts from weights that one bf16 update moved (and DPO's policy has left its
    # reference, so its loss is no longer log 2 whatever the precision)
    full = losses(stage, tmp_path / "fp32", teacher, tool_tokenizer, dtype="float32", max_steps=2)
    half = losses(stage, tmp_path / "bf16", teacher, tool_tokenizer, dtype="bfloat16", max_steps=2)
    # bf16 keeps 8 bits of mantissa: about 0.4% per rounding, a few percent after a model's worth of them
    assert half == pytest.approx(full, rel=0.03, abs=0.03), (stage, full, half)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "grpo"])
def test_fp16_with_a_grad_scaler_trains(stage, tmp_path, teacher):
    losses(stage, tmp_path / "fp16", teacher, dtype="float16", max_steps=2)
    state = json.loads((tmp_path / "fp16" / "resume" / "state.json").read_text())
    assert state["scaler"] and state["scaler"]["scale"] > 0  # the scaler ran and is saved for --resume


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_compiled_first_steps_match_eager(stage, tmp_path, teacher):
    # in bf16 autocast, as --dtype auto trains on GPUs and bf16 CPUs: inductor's fused kernels round as eager's.
    # One layer: every layer is the same code, and compiling time grows with the layers
    eager = losses(stage, tmp_path / "eager", teacher, layers=1, max_steps=2, dtype="bfloat16")
    compiled = losses(stage, tmp_path / "compiled", teacher, layers=1, max_steps=2, compile=True, dtype="bfloat16")
    assert compiled == pytest.approx(eager, rel=1e-3)  # the start and the step after it


# minimind-3's architecture at the tiny size: q/k-norm, and its MoE (top-1 of 4, no shared expert)
MINIMIND3_TINY = dict(qk_norm=True, rms_norm_eps=1e-6, use_moe=True, n_routed_experts=4, n_shared_experts=0,
                      num_experts_per_tok=1, aux_loss_alpha=5e-4)


def minimind3_losses(out, layers=None, **extra):
    paths = course()
    tok = load_tokenizer(paths["tokenizer"])
    torch.manual_seed(0)
    model = build_model("tiny", tok, **MINIMIND3_TINY, **({"num_hidden_layers": layers} if layers else {}))
    train_stage("pretrain", out, data=paths["pretrain"], tokenizer=paths["tokenizer"], model=model,
                **{**COMMON, "max_steps": 2, **extra})
    return [r["loss"] for r in read_metrics(out)]


def test_minimind3_architecture_trains_in_bf16(tmp_path):
    full = minimind3_losses(tmp_path / "fp32", dtype="float32")
    half = minimind3_losses(tmp_path / "bf16", dtype="bfloat16")
    assert all(math.isfinite(v) for v in full + half)
    assert half == pytest.approx(full, rel=0.03, abs=0.03)


@pytest.mark.slow
def test_minimind3_architecture_compiles(tmp_path):
    eager = minimind3_losses(tmp_path / "eager", layers=1, dtype="bfloat16")
    compiled = minimind3_losses(tmp_path / "compiled", layers=1, compile=True, dtype="bfloat16")
    assert compiled == pytest.approx(eager, rel=1e-3)
