"""`minimind bench`: FLOPs counting, MFU arithmetic, and a run whose JSON has every field. Speed itself is
measured by running the benchmark, never asserted here."""
import itertools
import json
import re
import statistics
from pathlib import Path

import pytest
import torch
from conftest import small_config
from torch.utils.flop_counter import FlopCounterMode

from minimind import MiniMindForCausalLM
from minimind.cli import main as cli_main
from minimind.model import fast
from minimind.use.bench import BenchSettings, bench_variants, dense_twin, run_benchmark
from minimind.use.bench_flops import (
    PRETRAIN_HQ_TOKENS,
    epoch_hours,
    flops_per_token,
    matmul_params_per_token,
    mfu,
    peak_flops,
    pretrain_projection,
)
from minimind.use.bench_minimind_code import MINIMIND_CODE_FILE
from minimind.use.bench_report import PAGE_BEGIN, PAGE_END, format_table, page_tables, update_page
from minimind.use.bench_timing import interleaved

MOE = dict(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)
ROOT = Path(__file__).resolve().parents[1]


def test_flops_per_token_by_hand():
    # hidden 64, 2 layers, 4 heads of 16, 2 KV heads, SwiGLU 96, vocab 97 (tied head: still a matmul)
    config = small_config()
    attention = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64       # q, k, v, o
    mlp = 3 * 64 * 96                                      # gate, up, down
    params = 2 * (attention + mlp) + 97 * 64               # + output head
    assert matmul_params_per_token(config) == params == 67648
    forward = 2 * params + 2 * 4 * 16 * 64                 # + q k^T and weights v: 4 * seq * hidden per layer
    assert flops_per_token(config, 16, training=False) == forward
    assert flops_per_token(config, 16) == 3 * forward
    # MoE: the router, the shared expert and top-2 of 4 routed experts
    moe = small_config(**MOE)
    assert matmul_params_per_token(moe) == 2 * (attention + 3 * mlp + 64 * 4) + 97 * 64


@pytest.mark.parametrize("overrides", [{}, MOE])
def test_flops_match_torch_flop_counter(overrides):
    """With the explicit (matmul) attention, torch counts exactly the FLOPs the formula gives."""
    config = small_config(explicit_attention=True, **overrides)
    model = MiniMindForCausalLM(config)
    x = torch.randint(0, config.vocab_size, (2, 16))
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() == flops_per_token(config, 16, training=False) * x.numel()
    # training: forward and backward through every position's logits (the loss itself skips the last
    # position, which has no target, so it does less work than the formula counts)
    with FlopCounterMode(display=False) as counter:
        model(x).logits.sum().backward()
    assert counter.get_total_flops() == flops_per_token(config, 16) * x.numel()


def test_peaks_mfu_and_projection():
    assert peak_flops("NVIDIA GeForce RTX 3090") == 71e12
    assert peak_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989.4e12
    assert peak_flops("Tesla T4") is None and peak_flops(None) is None
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, None) is None
    assert epoch_hours(1e9, 0.5, 1e13, tokens=3.6e7) == pytest.approx(2.0)  # 3.6e16 FLOPs at 5e12/s
    p = pretrain_projection(None)
    assert p["tokens"] == PRETRAIN_HQ_TOKENS == 1_413_120 * 512 and p["hours"] is None
    # the MFU that the seed project's 1.1 hours implies gives back 1.1 hours
    again = pretrain_projection(p["seed_implied_mfu"])
    assert again["hours"] == pytest.approx(1.1) and 0.3 < p["seed_implied_mfu"] < 0.6


def test_dense_twin_has_the_active_parameters():
    from minimind.course.anatomy import active_parameters
    moe = small_config(**MOE)
    twin = dense_twin(moe)
    assert not twin.use_moe and twin.intermediate_size == 3 * moe.intermediate_size
    assert active_parameters(moe) - active_parameters(twin) == 2 * 64 * 4  # the routers only


FIELDS_TRAIN = {"preset", "batch_size", "seq_len", "flops_per_token", "ours_tokens_per_s",
                "transformers_tokens_per_s", "ratio", "ours_mfu", "transformers_mfu", "max_logit_diff"}
FIELDS_DECODE = {"preset", "batch_size", "new_tokens", "ours_tokens_per_s", "transformers_tokens_per_s", "ratio",
                 "same_tokens"}


def check_result(result, decode_batches):
    assert {"machine", "settings", "training", "decoding", "moe", "projection"} <= set(result)
    assert result["machine"]["threads"] >= 1 and "load_average_before" in result["machine"]
    for row in result["training"]:
        assert FIELDS_TRAIN <= set(row) and row["ratio"] > 0 and row["max_logit_diff"] < 1e-4
    assert [r["batch_size"] for r in result["decoding"]] == list(decode_batches)
    for row in result["decoding"]:
        assert FIELDS_DECODE <= set(row) and row["same_tokens"] and row["ratio"] > 0
    variants = {r["variant"] for r in result["fast_paths"]}
    switches = {f"{name} off" for name in fast.FAST_PATHS}
    assert variants == {"all on"} | switches | ({"all off"} if len(switches) > 1 else set())
    assert "loss off" in variants
    for row in result["fast_paths"]:
        assert row["tokens_per_s"] > 0 and row["speedup_of_all_on"] > 0
        assert row["speedup_of_all_on"] == 1.0 or row["variant"] != "all on"
    assert result["moe"]["time_per_token_ratio"] > 0
    assert "hours" in result["projection"] and "seed_implied_mfu" in result["projection"]
    for row in result["variants"]:
        check_variants(row, result["settings"]["variant_reps"], minimind_code=True,
                       compiled=result["settings"]["variant_compile"])
    assert "| training |" in format_table(result)
    if result["variants"]:
        assert "| precision and compile |" in format_table(result)


def median_ratio(slow, fast):
    return statistics.median(a / b for a, b in zip(slow, fast))


FIELDS_VARIANTS = {"preset", "batch_size", "seq_len", "auto_dtype", "half_dtype", "params", "minimind_code",
                   "compile_s", "variants", "ratios", "skipped"}


def check_variants(row, reps, minimind_code, compiled):
    """A precision-and-compile row: every variant ran `reps` rounds; every ratio is the median of the
    per-round ratios of the times it names."""
    assert FIELDS_VARIANTS <= set(row)
    auto, half = {"bfloat16": "bf16", "float32": "fp32"}[row["auto_dtype"]], "bf16"
    families = ["ours", "transformers"] + (["MiniMind's code"] if minimind_code else [])
    names = {f"{f} {d} eager" for f in families for d in ("fp32", half)}
    names |= {f"{f} {auto} compiled" for f in ("ours", "transformers")} if compiled else set()
    times = {v["name"]: v["times_s"] for v in row["variants"]}
    assert set(times) == names
    assert set(row["params"]) == set(families) and len(set(row["params"].values())) == 1  # same shape
    base = times["transformers fp32 eager"]
    for v in row["variants"]:
        assert len(v["times_s"]) == reps and min(v["times_s"]) > 0 and v["tokens_per_s"] > 0
        assert v["tokens_per_s"] == pytest.approx(row["batch_size"] * row["seq_len"] / statistics.median(v["times_s"]))
        assert v["vs_transformers_fp32"] == pytest.approx(median_ratio(base, v["times_s"]))
        assert v["model"] in families and v["compiled"] == v["name"].endswith("compiled")
    expected = {"auto_vs_transformers_fp32", "bf16_vs_transformers_bf16", "bf16_vs_fp32", "transformers_bf16_vs_fp32"}
    expected |= {"compiled_vs_eager", "transformers_compiled_vs_eager"} if compiled else set()
    expected |= {"vs_minimind_code_fp32", "vs_minimind_code_bf16"} if minimind_code else set()
    assert set(row["ratios"]) == expected
    for r in row["ratios"].values():
        assert r["value"] > 0 and r["value"] == pytest.approx(median_ratio(times[r["slow"]], times[r["fast"]]))
    assert row["ratios"]["auto_vs_transformers_fp32"]["fast"] == f"ours {auto} eager"
    assert row["ratios"]["auto_vs_transformers_fp32"]["slow"] == "transformers fp32 eager"
    assert compiled == bool(row["compile_s"]) and compiled != ("compiled" in row["skipped"])
    assert minimind_code == (row["minimind_code"] is not None) != ("minimind_code" in row["skipped"])


def test_run_benchmark_on_tiny_shapes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MiniMind's code ships with the package: found outside the course root too
    settings = BenchSettings(batch_size=2, seq_len=16, train_reps=1, decode_batches=(1, 2), prompt_len=4,
                             new_tokens=4, decode_reps=1, moe_reps=1, fast_path_reps=1, min_sample_s=0.0, device="cpu",
                             variant_reps=2, variant_compile=False, quick=True)
    result = run_benchmark(settings, configs={"small": small_config()}, moe_config=small_config(**MOE),
                           log=lambda _: None, variant_configs={"small": small_config()})
    check_result(result, (1, 2))
    row = result["variants"][0]
    assert row["minimind_code"].endswith("minimind2_model.py") and set(row["skipped"]) == {"compiled"}
    table = format_table(result)
    assert "| small | 2 x 16 | MiniMind's code bf16 eager |" in table and "`vs_minimind_code_fp32`" in table
    assert "- torch.compile, small: not measured (torch.compile off" in table
    json.dumps(result)  # JSON-ready
    del result["variants"]  # a result saved before the section existed still renders, without it
    assert "precision and compile" not in format_table(result)


def write_broken(tmp_path):
    bad = tmp_path / "model_minimind.py"
    bad.write_text("raise ImportError('needs a package that is not installed')\n")
    return str(bad)


def write_failing(tmp_path):
    bad = tmp_path / "model_minimind.py"
    bad.write_text("import torch\n\nclass MiniMindConfig:\n    def __init__(self, **kwargs):\n        pass\n\n"
                   "class MiniMindForCausalLM(torch.nn.Module):\n    def __init__(self, config):\n"
                   "        super().__init__()\n        self.w = torch.nn.Parameter(torch.ones(1))\n\n"
                   "    def forward(self, **kwargs):\n"
                   "        raise RuntimeError('shapes do not match')\n")
    return str(bad)


@pytest.mark.parametrize("given, reason", [
    (lambda tmp: str(tmp / "nowhere.py"), "not found"),
    (lambda tmp: str(tmp), "model_minimind.py not found"),  # a folder that is no checkout of MiniMind
    (write_broken, "ImportError: needs a package"),
    (write_failing, "RuntimeError: shapes do not match"),  # imports and builds, fails in its first step
])
def test_minimind_code_that_cannot_run_is_skipped_with_the_reason(tmp_path, given, reason):
    logged = []
    row = bench_variants(small_config(), 2, 8, 1, torch.device("cpu"), torch.bfloat16, compile=False,
                         minimind_code=given(tmp_path), preset="small", log=logged.append)
    check_variants(row, 1, minimind_code=False, compiled=False)
    assert reason in row["skipped"]["minimind_code"] and any(reason in line for line in logged)
    table = format_table({**json.loads((ROOT / "book" / "performance_cpu.json").read_text()), "variants": [row]})
    assert "- small: MiniMind's code skipped:" in table and reason in table


def test_minimind_code_from_a_checkout(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_minimind.py").write_text(MINIMIND_CODE_FILE.read_text())
    row = bench_variants(small_config(), 2, 8, 1, torch.device("cpu"), None, compile=False,
                         minimind_code=str(tmp_path), preset="small", log=lambda _: None)
    check_variants(row, 1, minimind_code=True, compiled=False)
    assert row["minimind_code"] == str(tmp_path / "model" / "model_minimind.py") and row["auto_dtype"] == "float32"


def test_precision_variants_compile():
    """The compiled variants, on the smallest model (compiling takes most of this test's time)."""
    row = bench_variants(small_config(num_hidden_layers=1), 2, 8, 1, torch.device("cpu"), torch.bfloat16,
                         compile=True, minimind_code=str(MINIMIND_CODE_FILE), preset="one layer",
                         log=lambda _: None)
    check_variants(row, 1, minimind_code=True, compiled=True)
    assert set(row["compile_s"]) == {"ours", "transformers"} and row["ratios"]["compiled_vs_eager"]["fast"] == \
        "ours bf16 compiled"


def test_bench_cli_options_reach_the_settings(monkeypatch):
    import minimind.use.bench as bench
    seen = []
    monkeypatch.setattr(bench, "main", lambda settings, **kw: seen.append(settings))
    assert cli_main(["bench", "--quick", "--minimind-code", "mm", "--variant-presets", "tiny", "minimind2-small",
                     "--variant-reps", "5", "--variant-compile", "on"]) == 0
    assert cli_main(["bench", "--skip-variants", "--reps", "4"]) == 0
    quick, full = seen
    assert quick.minimind_code == "mm" and quick.variant_presets == ("tiny", "minimind2-small")
    assert quick.variant_reps == 5 and quick.variant_compile is True
    assert full.variant_presets == () and full.variant_reps == 4 and full.variant_compile is True
    assert BenchSettings.quick_settings().variant_compile is False


@pytest.mark.slow
def test_bench_quick_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    check_result(result, (1, 8))
    assert result["settings"]["quick"] and [r["preset"] for r in result["training"]] == ["tiny"]
    assert "| decoding |" in capsys.readouterr().out


def test_tables_go_into_a_page_between_markers(tmp_path):
    settings = BenchSettings(batch_size=2, seq_len=8, train_reps=1, decode_batches=(1,), prompt_len=4, new_tokens=2,
                             decode_reps=1, moe_reps=1, fast_path_reps=1, fast_path_prompt_fractions=(0.5,),
                             min_sample_s=0.0, device="cpu", quick=True)
    result = run_benchmark(settings, configs={"small": small_config()}, moe_config=small_config(**MOE),
                           log=lambda _: None, variant_configs={})
    page = tmp_path / "perf.md"
    page.write_text("# Perf\n\nbefore\n\n" + PAGE_BEGIN.format(json="r.json") + "\nold\n" + PAGE_END + "\n\nafter\n")
    update_page(page, result, "r.json")
    text = page.read_text()
    assert page_tables(text, "r.json") == format_table(result)
    assert text.startswith("# Perf\n\nbefore") and text.endswith("after\n") and "old" not in text
    with pytest.raises(ValueError, match="no block for other.json"):
        update_page(page, result, "other.json")


def check_page_blocks(begin: str, end: str, render, rerun: str) -> list[str]:
    """Every block of book/performance.md between `begin` (naming its JSON file) and `end` is `render(json)`,
    as the command that wrote it left it; returns the JSON files named."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "book" / "performance.md").read_text()
    names = re.findall(re.escape(begin).replace(re.escape("{json}"), "(.+?)"), text)
    assert names, f"book/performance.md has no block starting {begin!r}"
    for name in names:
        assert page_tables(text, name, begin, end) == render(json.loads((root / name).read_text())), \
            f"rerun: {rerun.format(json=name)} --page book/performance.md"
    return names


def test_the_book_shows_the_tables_of_its_json():
    """book/performance.md's tables are the committed JSON results, as `minimind bench --page` wrote them."""
    names = check_page_blocks(PAGE_BEGIN, PAGE_END, format_table, "minimind bench --from-json {json}")
    assert "book/performance_cpu.json" in names


def test_the_book_shows_the_course_comparison_of_its_json():
    """The float32-vs-bf16 course tables are the committed JSON, as `minimind course --compare --page` wrote them."""
    from minimind.course.report import COMPARE_BEGIN, COMPARE_END, format_comparison
    check_page_blocks(COMPARE_BEGIN, COMPARE_END, format_comparison, "minimind course --compare ... --json {json}")


def test_the_book_shows_the_course_times_of_its_json():
    """The course's chapter times are the committed JSON, as `minimind course --times --page` wrote them."""
    from minimind.course.report import TIMES_BEGIN, TIMES_END, format_course_times
    check_page_blocks(TIMES_BEGIN, TIMES_END, format_course_times, "minimind course --times RUN --json {json}")


def test_interleaved_samples_the_same_number_of_calls_for_every_side():
    import time
    calls = {"a": 0, "b": 0}
    order = []

    def make(name, seconds):
        def fn():
            calls[name] += 1
            order.append(name)
            time.sleep(seconds)
        return fn

    times = interleaved({"a": make("a", 0.002), "b": make("b", 0.004)}, reps=4, device=torch.device("cpu"),
                        settle=True, min_sample_s=0.01)
    assert len(times["a"]) == len(times["b"]) == 4
    assert calls["a"] == calls["b"] > 4 * 2  # several calls per sample, a settling call before each
    assert min(times["a"]) >= 0.002 and min(times["b"]) >= 0.004  # seconds per call, not per sample
    # the second round runs b first: after the warm-up (a, b) and round one (a..., b...), b runs twice as long
    runs = [len(list(group)) for _, group in itertools.groupby(order[2:])]
    assert runs[1] == 2 * runs[0]


def test_data_bench_makes_valid_files_and_measures_them(tmp_path):
    from course_helpers import course

    from minimind.data.records import check_file
    from minimind.use.bench_data import bench_file, make_file
    paths = course()
    for kind in ("sft", "pretrain"):
        f = make_file(tmp_path / f"{kind}.jsonl", kind, 0.3, Path(paths["pretrain"]).parent)
        assert 0.3e6 <= f.stat().st_size < 0.31e6
        assert check_file(f, kind)["records"] > 50  # valid MiniMind records, every line
    r = bench_file(tmp_path / "sft.jsonl", "sft", paths["tokenizer"], seq_len=128, step=False)
    assert r["samples"] > 50 and r["mb_per_s"] > 0 and r["tokenize_peak_rss_mb"] > 0
    assert r["cached_seconds"] < r["tokenize_seconds"]  # the second run reads the table


def test_the_book_shows_the_data_bench_tables_of_its_json():
    """book/performance.md's data tables are the committed `minimind data bench` results."""
    from minimind.use.bench_data import PAGE_BEGIN as DATA_BEGIN
    from minimind.use.bench_data import PAGE_END as DATA_END
    from minimind.use.bench_data import format_markdown
    check_page_blocks(DATA_BEGIN, DATA_END, format_markdown, "minimind data bench --from-json {json}")
