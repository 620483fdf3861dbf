"""`minimind bench`: the package's model against transformers' Llama on the same config and weights.

Three measurements, each an interleaved A/B (ours, theirs, then theirs, ours, ...) in one process, reported
as medians and the median of the per-round ratios, so that a machine whose load changes during the run
slows both sides alike:

- training tokens/s: forward + backward + AdamW step, on random tokens, with the same optimizer for both;
- decoding tokens/s: greedy `generate` with a KV cache at batch 1 and batch 8 (new tokens over wall time,
  prefill included), against transformers' `generate` on the same weights;
- MoE against its dense twin: the MoE preset and a dense model whose MLP has the width of the experts a
  token uses (shared + top-k), i.e. equal active parameters, as time per token;
- precision and compile: training steps of ours, transformers' Llama and MiniMind's own model code, each in
  fp32 and bf16 autocast, eager and (ours, transformers) compiled, all in one interleaved round-robin.

On a GPU it adds model FLOPs utilisation (MFU): FLOPs per token counted from the config, times tokens/s,
over the GPU's peak bf16 FLOP/s from `PEAK_BF16_FLOPS`; and from the measured MFU, the time one epoch of
MiniMind's pretrain_hq would take on an RTX 3090.

This module runs the measurements; its helpers are bench_timing (interleaved timing, the machine),
bench_flops (FLOPs and MFU), bench_minimind_code (MiniMind's model file) and bench_report (goals, tables,
the book page).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Callable, Optional

import torch

from ..model.config import MiniMindConfig
from ..model.transformer import MiniMindForCausalLM, active_parameters
from .bench_flops import flops_per_token, mfu, peak_flops, pretrain_projection
from .bench_minimind_code import find_minimind_code, minimind_code_model
from .bench_report import format_table, update_page
from .bench_timing import auto_threads, cpu_name, interleaved, load_average, paired_ratio, warm_compiled


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def twin_models(config: MiniMindConfig, device, seed: int = 0):
    """(ours, transformers' LlamaForCausalLM with SDPA) holding the same weights, on `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .export import hf_config, hf_state_dict
    if config.use_moe:
        raise ValueError("the transformers comparison is for dense presets (LlamaForCausalLM)")
    torch.manual_seed(seed)
    ours = MiniMindForCausalLM(config)
    fields = {k: v for k, v in hf_config(config).items() if k not in ("architectures", "model_type", "torch_dtype")}
    theirs = LlamaForCausalLM(LlamaConfig(**fields, attn_implementation="sdpa"))
    missing, unexpected = theirs.load_state_dict(hf_state_dict(ours), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"weights do not map onto LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        theirs.lm_head.weight = theirs.model.embed_tokens.weight
    return ours.to(device), theirs.to(device)


def _train_step(net, model, x, optimizer, amp_dtype, device, labels=None):
    labels = x if labels is None else labels

    def step():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = net(input_ids=x, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _optimizer(model, device):
    from ..train.loop import TrainArgs, make_optimizer
    return make_optimizer(model, TrainArgs(), device)


def bench_training(models: dict[str, torch.nn.Module], config: MiniMindConfig, batch_size: int, seq_len: int,
                   reps: int, device, amp_dtype=None, compile: bool = False, steps: int = 1,
                   min_sample_s: float = 0.0) -> dict:
    """Training tokens/s of each model (same optimizer, same random tokens), interleaved."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, config.vocab_size, (batch_size, seq_len), generator=g).to(device)
    fns = {}
    for name, model in models.items():
        model.train()
        net = torch.compile(model) if compile else model
        step = _train_step(net, model, x, _optimizer(model, device), amp_dtype, device)
        fns[name] = (lambda step=step: [step() for _ in range(steps)])
    if compile:  # compilation happens in the first calls; keep it out of the warm-up's single call
        for fn in fns.values():
            fn()
    times = interleaved(fns, reps, device, settle=True, min_sample_s=min_sample_s)
    tokens = batch_size * seq_len * steps
    return {name: {"tokens_per_s": tokens / statistics.median(t), "times_s": t} for name, t in times.items()}


def bench_decoding(ours, theirs, config: MiniMindConfig, batch_size: int, prompt_len: int, new_tokens: int,
                   reps: int, device, min_sample_s: float = 0.0) -> dict:
    """Greedy decoding tokens/s (new tokens over wall time, prefill included), ours against transformers'
    generate on the same weights; EOS is disabled on both sides so every run makes new_tokens tokens."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(3, config.vocab_size, (batch_size, prompt_len), generator=g).to(device)
    mask = torch.ones_like(x)
    ours.eval()
    theirs.eval()
    theirs.generation_config.eos_token_id = None
    fns = {"ours": lambda: ours.generate(x, max_new_tokens=new_tokens, do_sample=False),
           "transformers": lambda: theirs.generate(x, attention_mask=mask, max_new_tokens=new_tokens,
                                                   do_sample=False, pad_token_id=config.pad_token_id)}
    with torch.no_grad():
        a, b = fns["ours"](), fns["transformers"]()
        times = interleaved(fns, reps, device, settle=True, min_sample_s=min_sample_s)
    out = {name: {"tokens_per_s": batch_size * new_tokens / statistics.median(t), "times_s": t}
           for name, t in times.items()}
    out["same_tokens"] = bool(a.shape == b.shape and torch.equal(a.cpu(), b.cpu()))
    return out


def bench_fast_paths(config: MiniMindConfig, batch_size: int, seq_len: int, reps: int, device, amp_dtype=None,
                     prompt_fraction: float = 0.0, preset: Optional[str] = None,
                     min_sample_s: float = 0.0) -> list[dict]:
    """What each hand-written fast path (fast.FAST_PATHS) buys: training tokens/s of one model with all of
    them on, against the same model with each one off in turn and, when there are several, with all off,
    interleaved. `prompt_fraction` masks that share of every sequence's labels with -100, as SFT masks the
    prompt."""
    from ..model import fast
    torch.manual_seed(0)
    model = MiniMindForCausalLM(config).to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, config.vocab_size, (batch_size, seq_len), generator=g).to(device)
    labels = x.clone()
    labels[:, :int(seq_len * prompt_fraction)] = -100
    step = _train_step(model, model, x, _optimizer(model, device), amp_dtype, device, labels=labels)

    def without(*names):
        def run():
            with fast.plain(*names):
                step()
        return run

    variants = {"all on": step} | {f"{n} off": without(n) for n in fast.FAST_PATHS}
    if len(fast.FAST_PATHS) > 1:  # with a single switch, "all off" would time "<it> off" again
        variants["all off"] = without(*fast.FAST_PATHS)
    times = interleaved(variants, reps, device, settle=True, min_sample_s=min_sample_s)
    tokens = batch_size * seq_len
    return [{"preset": preset or config.preset, "batch_size": batch_size, "seq_len": seq_len,
             "prompt_fraction": prompt_fraction, "variant": variant,
             "tokens_per_s": tokens / statistics.median(t),
             "speedup_of_all_on": paired_ratio(t, times["all on"]), "times_s": t} for variant, t in times.items()]


# --------------------------------------------------------------------------------------------------
# Precision and compile
# --------------------------------------------------------------------------------------------------
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
MINIMIND_CODE = "MiniMind's code"


def _short(amp_dtype: Optional[torch.dtype]) -> str:
    from ..train.runtime import precision_name
    return SHORT_DTYPE[precision_name(amp_dtype)]


def half_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 autocast, or float16 on a GPU without bf16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def bench_variants(config: MiniMindConfig, batch_size: int, seq_len: int, reps: int, device,
                   auto_dtype: Optional[torch.dtype] = None, compile: bool = True, minimind_code: Optional[str] = None,
                   min_sample_s: float = 0.0, preset: Optional[str] = None,
                   log: Callable[[str], None] = print) -> dict:
    """Training tokens/s of ours, transformers' Llama (same weights) and MiniMind's own code, in fp32 and in
    bf16 autocast, eager, and ours and transformers compiled in `auto_dtype`: one interleaved round-robin, so
    every variant sees the same machine load. Variants that cannot run are left out, with the reason."""
    from ..train.runtime import precision_name
    half = half_dtype(device)
    ours, theirs = twin_models(config, device)
    models = {"ours": ours, "transformers": theirs}
    optimizers = {family: _optimizer(model.train(), device) for family, model in models.items()}
    skipped = {}
    code_path, why = find_minimind_code(minimind_code)
    if code_path is not None:
        try:
            model = minimind_code_model(code_path, config).to(device).train()
            optimizers[MINIMIND_CODE], models[MINIMIND_CODE] = _optimizer(model, device), model
        except Exception as err:  # any failure of someone else's file: skip it, say why
            why = f"{code_path}: {_reason(err)}"
    if why:
        skipped["minimind_code"] = why
        log(f"  skipped MiniMind's code: {why}")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, config.vocab_size, (batch_size, seq_len), generator=g).to(device)
    fns, meta = {}, {}

    def label(family, amp_dtype, compiled=False):
        return f"{family} {_short(amp_dtype)} {'compiled' if compiled else 'eager'}"

    def add(family, amp_dtype, compiled=False):
        name = label(family, amp_dtype, compiled)
        if family in models and name not in fns:
            model = models[family]
            net = torch.compile(model) if compiled else model
            fns[name] = _train_step(net, model, x, optimizers[family], amp_dtype, device)
            meta[name] = {"model": family, "dtype": precision_name(amp_dtype), "compiled": compiled}
        return name

    eager_dtypes = list(dict.fromkeys((None, half, auto_dtype)))  # fp32, bf16, and --dtype's if another
    for amp_dtype in eager_dtypes:
        add("ours", amp_dtype), add("transformers", amp_dtype)
    compile_s = {}
    if compile:
        for family in ("ours", "transformers"):
            name = add(family, auto_dtype, compiled=True)
            log(f"  compiling {name} ...")
            try:
                compile_s[family] = warm_compiled(fns[name], device)
            except Exception as err:  # e.g. no C++ compiler for inductor
                skipped["compiled"] = f"{name}: {_reason(err)}"
                log(f"  skipped the compiled variants: {skipped['compiled']}")
                for n in [n for n in fns if meta[n]["compiled"]]:
                    del fns[n], meta[n]
                compile_s = {}
                break
    else:
        skipped["compiled"] = "torch.compile off (--variant-compile off, the --quick default)"
    for amp_dtype in eager_dtypes:
        name = add(MINIMIND_CODE, amp_dtype)
        try:  # its step runs once here, so that a failing forward or backward is a skip, not a crash
            if name in fns:
                fns[name]()
        except Exception as err:
            skipped["minimind_code"] = f"{name}: {_reason(err)}"
            log(f"  skipped MiniMind's code: {skipped['minimind_code']}")
            for n in [n for n in fns if meta[n]["model"] == MINIMIND_CODE]:
                del fns[n], meta[n]
            del models[MINIMIND_CODE]
            break
    times = interleaved(fns, reps, device, settle=True, min_sample_s=min_sample_s)
    tokens = batch_size * seq_len
    base = label("transformers", None)
    variants = [{"name": name, **meta[name], "tokens_per_s": tokens / statistics.median(t),
                 "vs_transformers_fp32": paired_ratio(times[base], t), "times_s": t} for name, t in times.items()]
    pairs = {  # key: (slower, faster); the ratio is how many times faster the second runs
        "auto_vs_transformers_fp32": (base, label("ours", auto_dtype)),
        "bf16_vs_transformers_bf16": (label("transformers", half), label("ours", half)),
        "compiled_vs_eager": (label("ours", auto_dtype), label("ours", auto_dtype, True)),
        "transformers_compiled_vs_eager": (label("transformers", auto_dtype), label("transformers", auto_dtype, True)),
        "bf16_vs_fp32": (label("ours", None), label("ours", half)),
        "transformers_bf16_vs_fp32": (base, label("transformers", half)),
        "vs_minimind_code_fp32": (label(MINIMIND_CODE, None), label("ours", None)),
        "vs_minimind_code_bf16": (label(MINIMIND_CODE, half), label("ours", half)),
    }
    ratios = {key: {"value": paired_ratio(times[slow], times[fast]), "slow": slow, "fast": fast}
              for key, (slow, fast) in pairs.items() if slow in times and fast in times}
    return {"preset": preset or config.preset, "batch_size": batch_size, "seq_len": seq_len,
            "auto_dtype": precision_name(auto_dtype), "half_dtype": precision_name(half),
            "params": {family: sum(p.numel() for p in m.parameters()) for family, m in models.items()},
            "minimind_code": str(code_path) if MINIMIND_CODE in models else None,
            "compile_s": compile_s, "variants": variants, "ratios": ratios, "skipped": skipped}


def dense_twin(config: MiniMindConfig) -> MiniMindConfig:
    """A dense config with the MoE config's active parameters: its MLP is as wide as the shared and top-k
    routed experts a token passes through (only the router's few weights differ)."""
    width = config.moe_intermediate_size * (config.num_experts_per_tok + config.n_shared_experts)
    return dataclasses.replace(config, use_moe=False, intermediate_size=width, moe_intermediate_size=width,
                               preset=f"{config.preset}-dense-twin")


# --------------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchSettings:
    presets: tuple = ("tiny", "minimind2-small")
    moe_preset: Optional[str] = "minimind2-moe"
    device: str = "auto"
    dtype: str = "auto"           # auto: bfloat16 on a GPU or CPU that has it, else float32
    compile: str = "auto"         # auto: on for CUDA, off on CPU (slower there, see book/performance.md)
    batch_size: Optional[int] = None
    seq_len: Optional[int] = None
    train_reps: int = 7
    decode_batches: tuple = (1, 8)
    prompt_len: int = 32
    new_tokens: int = 64
    decode_reps: int = 7
    moe_reps: int = 5
    fast_path_reps: int = 7
    min_sample_s: float = 1.0     # each timed sample runs at least this long (several calls when they are short)
    fast_path_prompt_fractions: tuple = (0.0, 0.5)  # pretraining labels; SFT-like, half of each sequence a prompt
    threads: Optional[int] = None  # None: auto_threads()
    # precision and compile: () turns the section off
    variant_presets: tuple = ("minimind2-small",)
    variant_reps: int = 9
    variant_compile: bool = True
    minimind_code: Optional[str] = None  # MiniMind's model file or checkout; None: the package's copy
    quick: bool = False

    @classmethod
    def quick_settings(cls, **overrides) -> "BenchSettings":
        """A run under a minute on a CPU: the tiny preset, short sequences, three repetitions."""
        base = dict(presets=("tiny",), moe_preset="tiny", batch_size=4, seq_len=64, train_reps=3,
                    new_tokens=16, prompt_len=16, decode_reps=3, moe_reps=3, fast_path_reps=2,
                    fast_path_prompt_fractions=(0.5,), min_sample_s=0.0, variant_presets=("tiny",),
                    variant_reps=3, variant_compile=False, quick=True)
        return cls(**{**base, **overrides})


def _resolve(settings: BenchSettings):
    from ..train.runtime import autocast_dtype, pick_device
    device = pick_device(settings.device)
    amp_dtype = autocast_dtype(settings.dtype, device)
    compile = {"auto": device.type == "cuda", "on": True, "off": False}[str(settings.compile)]
    return device, amp_dtype, compile


def _moe_config(name: str) -> MiniMindConfig:
    config = MiniMindConfig.from_preset(name)
    if not config.use_moe:  # e.g. "tiny": its MoE variant, as chapter 06 builds it
        config = MiniMindConfig.from_preset(name, use_moe=True, n_routed_experts=4, n_shared_experts=1,
                                            num_experts_per_tok=2)
        config.preset = f"{name}-moe"
    return config


def run_benchmark(settings: BenchSettings, configs: Optional[dict[str, MiniMindConfig]] = None,
                  moe_config: Optional[MiniMindConfig] = None, log: Callable[[str], None] = print,
                  variant_configs: Optional[dict[str, MiniMindConfig]] = None) -> dict:
    """Run every measurement and return the JSON-ready result. `configs` ({name: config}) replaces the dense
    presets, `moe_config` the MoE preset and `variant_configs` the precision-and-compile presets (tests use
    tiny shapes)."""
    import transformers
    transformers.logging.set_verbosity_error()
    device, amp_dtype, compile = _resolve(settings)
    if variant_configs is None:
        variant_configs = {p: MiniMindConfig.from_preset(p) for p in settings.variant_presets}
    moe = [name for name, c in variant_configs.items() if c.use_moe]
    if moe:  # before measuring anything
        raise ValueError(f"variant presets {moe}: the precision and compile section compares dense models")
    load_before = load_average()
    threads = settings.threads or auto_threads()
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        return _run(settings, configs, moe_config, variant_configs, log, device, amp_dtype, compile, load_before)
    finally:
        torch.set_num_threads(threads_before)


def _run(settings, configs, moe_config, variant_configs, log, device, amp_dtype, compile, load_before) -> dict:
    import transformers
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else cpu_name()
    peak = peak_flops(name) if on_gpu else None
    batch = settings.batch_size or (32 if on_gpu else 4)
    seq = settings.seq_len or (512 if on_gpu else 256)
    configs = configs or {p: MiniMindConfig.from_preset(p) for p in settings.presets}

    def amp_for(config):  # what training picks for this model: --dtype auto keeps small models float32 on a CPU
        from ..train.runtime import autocast_dtype
        return autocast_dtype(settings.dtype, device, config.hidden_size)
    from ..train.runtime import precision_name
    dtypes = {p: precision_name(amp_for(c)) for p, c in configs.items()}
    result = {
        "machine": {"device": str(device), "device_name": name, "peak_bf16_flops": peak,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "threads": torch.get_num_threads(), "load_average_before": load_before},
        "settings": {**dataclasses.asdict(settings), "batch_size": batch, "seq_len": seq,
                     "dtype": precision_name(amp_dtype), "dtypes": dtypes,
                     "dtype_asked": settings.dtype, "compile": compile},
        "training": [], "decoding": [], "fast_paths": [], "moe": None, "variants": [], "projection": None,
    }
    for preset, config in configs.items():
        amp_dtype = amp_for(config)
        log(f"training: {preset} batch {batch} x {seq}, {dtypes[preset]} ...")
        ours, theirs = twin_models(config, device)
        with torch.no_grad():
            probe = torch.randint(3, config.vocab_size, (1, 16), device=device)
            diff = (ours.eval()(probe).logits - theirs.eval()(probe).logits).abs().max().item()
        res = bench_training({"ours": ours, "transformers": theirs}, config, batch, seq, settings.train_reps,
                             device, amp_dtype, compile, min_sample_s=settings.min_sample_s)
        fpt = flops_per_token(config, seq)
        row = {"preset": preset, "params": ours.num_parameters(), "batch_size": batch, "seq_len": seq,
               "flops_per_token": fpt, "max_logit_diff": diff,
               "ours_tokens_per_s": res["ours"]["tokens_per_s"],
               "transformers_tokens_per_s": res["transformers"]["tokens_per_s"],
               "ratio": paired_ratio(res["transformers"]["times_s"], res["ours"]["times_s"]),
               "ours_mfu": mfu(res["ours"]["tokens_per_s"], fpt, peak),
               "transformers_mfu": mfu(res["transformers"]["tokens_per_s"], fpt, peak),
               "ours_times_s": res["ours"]["times_s"], "transformers_times_s": res["transformers"]["times_s"]}
        result["training"].append(row)
        # training moved both models, each by its own float rounding: decode from identical weights again
        ours, theirs = twin_models(config, device)
        if on_gpu and amp_dtype is not None:  # decode in the autocast dtype, weights cast
            ours.to(amp_dtype), theirs.to(amp_dtype)
        for b in settings.decode_batches:
            log(f"decoding: {preset} batch {b}, {settings.prompt_len} + {settings.new_tokens} tokens ...")
            res = bench_decoding(ours, theirs, config, b, settings.prompt_len, settings.new_tokens,
                                 settings.decode_reps, device, min_sample_s=settings.min_sample_s)
            result["decoding"].append({
                "preset": preset, "batch_size": b, "prompt_len": settings.prompt_len,
                "new_tokens": settings.new_tokens, "same_tokens": res["same_tokens"],
                "ours_tokens_per_s": res["ours"]["tokens_per_s"],
                "transformers_tokens_per_s": res["transformers"]["tokens_per_s"],
                "ratio": paired_ratio(res["transformers"]["times_s"], res["ours"]["times_s"]),
                "ours_times_s": res["ours"]["times_s"], "transformers_times_s": res["transformers"]["times_s"]})
        del ours, theirs
        for fraction in settings.fast_path_prompt_fractions:
            log(f"fast paths: {preset}, {fraction:.0%} of the labels masked ...")
            result["fast_paths"] += bench_fast_paths(config, batch, seq, settings.fast_path_reps, device, amp_dtype,
                                                     prompt_fraction=fraction, preset=preset,
                                                     min_sample_s=settings.min_sample_s)
    if settings.moe_preset or moe_config is not None:
        moe_cfg = moe_config or _moe_config(settings.moe_preset)
        twin_cfg = dense_twin(moe_cfg)
        mb, ms = (batch, seq) if on_gpu or settings.quick else (2, seq)
        log(f"MoE: {moe_cfg.preset} against its dense twin, batch {mb} x {ms} ...")
        torch.manual_seed(0)
        models = {"moe": MiniMindForCausalLM(moe_cfg).to(device), "dense": MiniMindForCausalLM(twin_cfg).to(device)}
        res = bench_training(models, moe_cfg, mb, ms, settings.moe_reps, device, amp_for(moe_cfg), compile,
                             min_sample_s=settings.min_sample_s)
        result["moe"] = {
            "preset": moe_cfg.preset, "batch_size": mb, "seq_len": ms,
            "moe_active_params": active_parameters(moe_cfg), "dense_active_params": active_parameters(twin_cfg),
            "moe_total_params": models["moe"].num_parameters(), "dense_intermediate_size": twin_cfg.intermediate_size,
            "moe_tokens_per_s": res["moe"]["tokens_per_s"], "dense_tokens_per_s": res["dense"]["tokens_per_s"],
            "time_per_token_ratio": paired_ratio(res["moe"]["times_s"], res["dense"]["times_s"]),
            "moe_times_s": res["moe"]["times_s"], "dense_times_s": res["dense"]["times_s"]}
        del models
    for preset, config in variant_configs.items():
        log(f"precision and compile: {preset} batch {batch} x {seq}, {settings.variant_reps} rounds ...")
        result["variants"].append(bench_variants(
            config, batch, seq, settings.variant_reps, device, amp_for(config), settings.variant_compile,
            settings.minimind_code, min_sample_s=settings.min_sample_s, preset=preset, log=log))
    measured = [r for r in result["training"] if r["ours_mfu"]]
    small = [r for r in measured if r["preset"] == "minimind2-small"] or measured
    result["projection"] = pretrain_projection(small[0]["ours_mfu"] if small else None)
    if small:
        result["projection"]["mfu_from"] = f"{small[0]['preset']} on {name}"
    result["machine"]["load_average_after"] = load_average()
    return result


def main(settings: BenchSettings, out: Optional[str] = None, page: Optional[str] = None,
         from_json: Optional[str] = None) -> dict:
    """Run the benchmark (or read a result saved before, `from_json`), print its tables, write the JSON
    to `out` and the tables into `page`."""
    result = json.loads(Path(from_json).read_text()) if from_json else run_benchmark(settings)
    print(format_table(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    if page:
        source = out or from_json
        if not source:
            raise ValueError("--page needs --json FILE (or --from-json FILE): the page names the JSON its tables "
                             "come from")
        update_page(page, result, source)
        print(f"wrote the tables into {page}")
    return result
