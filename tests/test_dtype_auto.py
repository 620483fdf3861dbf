"""--dtype auto: bf16 autocast where the hardware multiplies bf16 matrices, float32 elsewhere; the choice is
printed and recorded with the run."""
import json

import pytest
import torch
from course_helpers import course

from minimind.train import runtime, train_stage

CPU = torch.device("cpu")


def test_cpuinfo_flags():
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx2\n"
    assert runtime.bf16_flag(x86) == "avx512_bf16"
    assert runtime.bf16_flag(x86.replace("avx512_bf16", "amx_bf16 amx_tile")) == "amx_bf16"
    assert runtime.bf16_flag("flags\t: fpu sse2 avx512f avx512bw avx512vl\n") is None  # AVX-512 alone emulates bf16
    assert runtime.bf16_flag("Features\t: fp asimd bf16 i8mm\n") == "bf16"  # Arm (Graviton 3, Neoverse V1)
    assert runtime.bf16_flag("Features\t: fp asimd\nmodel name: bf16 in a name\n") is None


@pytest.mark.parametrize("flag, expected", [("avx512_bf16", torch.bfloat16), (None, None)])
def test_auto_follows_the_cpu(monkeypatch, flag, expected):
    monkeypatch.setattr(runtime, "cpu_bf16_hardware", lambda: flag)
    assert runtime.autocast_dtype("auto", CPU, hidden_size=512) is expected
    assert runtime.autocast_dtype("float32", CPU, hidden_size=512) is None  # asked for: whatever the hardware
    assert runtime.autocast_dtype("bfloat16", CPU, hidden_size=192) is torch.bfloat16
    line = runtime.describe_precision("auto", CPU, 512)
    assert (flag in line and "bfloat16" in line) if flag else "float32" in line and "no bf16 hardware" in line


def test_auto_keeps_small_models_float32_on_a_cpu(monkeypatch):
    """bf16 autocast does not pay on a CPU for narrow models (measured: tiny, hidden 192, no faster)."""
    monkeypatch.setattr(runtime, "cpu_bf16_hardware", lambda: "amx_bf16")
    small, wide = runtime.CPU_BF16_MIN_HIDDEN - 1, runtime.CPU_BF16_MIN_HIDDEN
    assert runtime.autocast_dtype("auto", CPU, small) is None
    assert runtime.autocast_dtype("auto", CPU, wide) is torch.bfloat16
    assert "gains nothing" in runtime.describe_precision("auto", CPU, small)


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        runtime.autocast_dtype("fp8", CPU)


@pytest.mark.parametrize("flag", ["amx_bf16", None])
def test_the_run_records_its_precision(monkeypatch, tmp_path, capsys, flag):
    monkeypatch.setattr(runtime, "cpu_bf16_hardware", lambda: flag)
    monkeypatch.setattr(runtime, "CPU_BF16_MIN_HIDDEN", 64)  # the tiny preset counts as wide here
    paths = course()
    summary = train_stage("pretrain", tmp_path, data=paths["pretrain"], tokenizer=paths["tokenizer"], max_steps=2,
                          batch_size=2, seq_len=32, device="cpu", log_every=1, progress=True)
    expected = "bfloat16" if flag else "float32"
    assert summary["precision"] == expected
    assert json.loads((tmp_path / "summary.json").read_text())["precision"] == expected
    assert f"precision: {expected}" in capsys.readouterr().out
