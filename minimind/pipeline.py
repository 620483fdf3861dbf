"""Everything a stage needs, built from files: model, tokenizer, datasets, the stage itself; then the loop.

`train_stage` is what `minimind train STAGE ...` and the notebooks call, so both run the same thing.
A stage builder takes the resolved pieces and returns (stage, train_data, val_data).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Callable, Optional

from .config import MiniMindConfig
from .model import MiniMindForCausalLM
from .train import (DistillStage, LoRAStage, PretrainStage, ReasonStage, SFTStage, TrainArgs, train)

# Starting points per stage for the tiny course; every one can be overridden.
STAGE_DEFAULTS = {
    "pretrain": dict(lr=2e-3, warmup_steps=20, batch_size=16),
    "sft": dict(lr=1e-3, warmup_steps=10, batch_size=16),
    "reason": dict(lr=1e-3, warmup_steps=10, batch_size=16),
    "lora": dict(lr=3e-3, warmup_steps=10, batch_size=16),
    "distill": dict(lr=1e-3, warmup_steps=10, batch_size=16),
    "dpo": dict(lr=2e-4, warmup_steps=5, batch_size=8),
    "reward": dict(lr=5e-4, warmup_steps=5, batch_size=8),
    "ppo": dict(lr=1e-4, batch_size=8, log_every=1),
    "grpo": dict(lr=1e-4, batch_size=4, log_every=1),
    "spo": dict(lr=1e-4, batch_size=8, log_every=1),
}


def token_file_for(jsonl: Path, tokenizer) -> Path:
    """Where the packed tokens of a pretraining file live: beside it, keyed by the tokenizer's vocabulary,
    so a retrained tokenizer never reads stale tokens."""
    key = hashlib.sha1(tokenizer.tokenizer.to_str().encode()).hexdigest()[:10]
    return jsonl.with_name(f"{jsonl.stem}.{key}.bin")


def _pretrain(pieces):
    from .data import PretrainDataset, tokenize_pretrain
    seq_len = pieces["seq_len"]

    def windows(path):
        if path is None:
            return None
        path = Path(path)
        bin_path = token_file_for(path, pieces["tokenizer"])
        if not bin_path.exists():
            tokenize_pretrain(path, pieces["tokenizer"], bin_path)
        return PretrainDataset(bin_path, seq_len)
    return PretrainStage(), windows(pieces["data"]), windows(pieces["val_data"])


def _sft_data(pieces):
    from .data import SFTDataset
    load = lambda p: SFTDataset(p, pieces["tokenizer"], pieces["seq_len"]) if p else None  # noqa: E731
    return load(pieces["data"]), load(pieces["val_data"])


def _sft(pieces):
    return (SFTStage(), *_sft_data(pieces))


def _reason(pieces):
    tok = pieces["tokenizer"]
    tags = [i for t in ("<think>", "</think>") if (i := tok.token_to_id(t)) is not None]
    kw = pieces["stage_kwargs"]
    return (ReasonStage(tag_token_ids=tags, tag_weight=kw.get("tag_weight", 1.0)), *_sft_data(pieces))


def _lora(pieces):
    kw = pieces["stage_kwargs"]
    stage = LoRAStage(rank=kw.get("lora_rank", 8), alpha=kw.get("lora_alpha", 16.0),
                      targets=kw.get("lora_targets"), base=str(pieces["init"]) if pieces["init"] else None)
    return (stage, *_sft_data(pieces))


def _distill(pieces):
    if not pieces["teacher"]:
        raise ValueError("distill needs --teacher CKPT (a larger model trained on the same tokenizer)")
    teacher = MiniMindForCausalLM.from_pretrained(pieces["teacher"])
    kw = pieces["stage_kwargs"]
    stage = DistillStage(teacher, alpha=kw.get("alpha", 0.5), temperature=kw.get("temperature", 1.0))
    return (stage, *_sft_data(pieces))


def _dpo(pieces):
    from .data import DPODataset
    from .dpo import DPOStage
    kw = pieces["stage_kwargs"]
    load = lambda p: DPODataset(p, pieces["tokenizer"], pieces["seq_len"]) if p else None  # noqa: E731
    return (DPOStage(beta=kw.get("beta", 0.1), average_logprobs=kw.get("average_logprobs", False)),
            load(pieces["data"]), load(pieces["val_data"]))


def _reward(pieces):
    from .data import DPODataset
    from .reward import RewardStage, ScalarHeadModel
    pieces["model"] = ScalarHeadModel.from_causal_lm(pieces["model"])  # the SFT model with a scalar head
    load = lambda p: DPODataset(p, pieces["tokenizer"], pieces["seq_len"]) if p else None  # noqa: E731
    return RewardStage(), load(pieces["data"]), load(pieces["val_data"])


RL_OPTIONS = {"ppo": ("ppo_epochs", "clip", "value_clip", "vf_coef", "kl_coef", "gamma", "lam"),
              "grpo": ("group_size", "beta", "clip", "updates_per_rollout"),
              "spo": ("beta", "baseline", "reward_range", "d_half", "rho_min", "rho_max", "advantage_clip")}
ROLLOUT_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p")


def _rl(name):
    def build(pieces):
        from .data import RLPromptDataset
        from .rl import make_alignment_stage
        kw = pieces["stage_kwargs"]
        options = {k: kw[k] for k in RL_OPTIONS[name] + ROLLOUT_OPTIONS if k in kw}
        stage = make_alignment_stage(name, pieces["tokenizer"], reward=kw.get("reward", "rule"), **options)
        # the RL stages' validation would be a fresh rollout's loss: they report held-out accuracy instead
        return stage, RLPromptDataset(pieces["data"], pieces["tokenizer"], max_len=pieces["seq_len"]), None
    return build


# name -> builder(pieces) -> (stage, train data, validation data); a builder may replace pieces["model"]
STAGES: dict[str, Callable] = {"pretrain": _pretrain, "sft": _sft, "reason": _reason, "lora": _lora,
                               "distill": _distill, "dpo": _dpo, "reward": _reward, "ppo": _rl("ppo"),
                               "grpo": _rl("grpo"), "spo": _rl("spo")}
DEFAULT_SEQ_LEN = 256  # tokens per sample unless --seq-len says otherwise


def load_tokenizer(path):
    from .tokenizer import MiniMindTokenizer
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path}: train one with `minimind tokenizer train` or pass "
                                "the folder of a checkpoint that has one")
    return MiniMindTokenizer.from_pretrained(path)


def build_model(preset: str, tokenizer, init=None, **overrides) -> MiniMindForCausalLM:
    """A checkpoint's model when init is given, else a fresh one of the preset sized to the tokenizer."""
    if init:
        return MiniMindForCausalLM.from_pretrained(init)
    config = MiniMindConfig.from_preset(preset, vocab_size=tokenizer.vocab_size,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, **overrides)
    return MiniMindForCausalLM(config)


def train_stage(stage: str, out, data=None, tokenizer=None, preset: str = "tiny", init=None, teacher=None,
                val_data=None, seq_len: Optional[int] = None, resume: bool = False,
                stage_kwargs: Optional[dict] = None, callbacks=(), model=None, **train_args) -> dict:
    """Train one stage from files into the run folder `out`; returns the loop's summary.

    tokenizer: a folder (or a MiniMindTokenizer); defaults to init's folder. train_args are TrainArgs fields.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    if data is None:
        raise ValueError(f"{stage} needs --data FILE")
    if not Path(data).exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if tokenizer is None and init is None:
        raise ValueError(f"{stage} needs --tokenizer DIR (or --init CKPT, whose tokenizer it then uses)")
    tok = load_tokenizer(tokenizer or init) if isinstance(tokenizer, (str, Path, type(None))) else tokenizer
    if model is None:
        import torch
        torch.manual_seed(train_args.get("seed", 0))  # the same fresh weights every time
        model = build_model(preset, tok, init)
    pieces = dict(data=data, val_data=val_data, tokenizer=tok, init=init, teacher=teacher, model=model,
                  seq_len=seq_len or DEFAULT_SEQ_LEN, stage_kwargs=stage_kwargs or {})
    stage_obj, train_data, val = STAGES[stage](pieces)
    known = {f.name for f in fields(TrainArgs)}
    unknown = sorted(set(train_args) - known)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; TrainArgs has {sorted(known)}")
    args = TrainArgs(**{**STAGE_DEFAULTS.get(stage, {}), **train_args})
    model = pieces["model"]
    summary = train(model, stage_obj, train_data, args, out, val_data=val, tokenizer=tok, resume=resume,
                    callbacks=callbacks)
    if int(os.environ.get("RANK", 0)) == 0:  # marks the run finished (ensure_stage reuses it)
        Path(out, "summary.json").write_text(json.dumps({"stage": stage, **summary}, indent=2, default=str) + "\n")
    summary["model"] = model
    return summary


# --------------------------------------------------------------------------------------------------
# The course: which data each stage reads, what it starts from, how long the tiny run trains
# --------------------------------------------------------------------------------------------------
# data/val_data name files of the course corpus (or MiniMind's datasets); init names another stage.
COURSE = {
    "pretrain": dict(data="pretrain", val_data="pretrain_val", init=None, max_steps=300),
    "sft": dict(data="sft", val_data="sft_val", init="pretrain", max_steps=250),
    "lora": dict(data="lora", val_data=None, init="sft", max_steps=120),
    "reason": dict(data="reason", val_data=None, init="sft", max_steps=200),
}
# MiniMind's published files for the same roles (`minimind data download NAME --out data/minimind`)
MINIMIND_FILES = {"pretrain": "pretrain_hq", "sft": "sft_mini_512", "lora": "lora_identity",
                  "reason": "r1_mix_1024", "dpo": "dpo", "rl": "rlaif-mini"}


def data_paths(data: str = "course", root=None) -> dict:
    """Paths of every stage's files: the generated course corpus (with its tokenizer), or MiniMind's
    datasets in data/minimind (downloaded before, with a tokenizer trained on them in data/minimind/tokenizer)."""
    from .report import find_root
    root = Path(root) if root else find_root()
    if data == "course":
        from .corpus import ensure_course_data
        return ensure_course_data(root / "data" / "course")
    if data == "minimind":
        folder = root / "data" / "minimind"
        paths = {role: folder / f"{name}.jsonl" for role, name in MINIMIND_FILES.items()}
        missing = [p.name for p in paths.values() if not p.exists()]
        if missing:
            names = " ".join(n[:-len(".jsonl")] for n in missing)
            raise FileNotFoundError(f"MiniMind's datasets are missing from {folder}: {missing}. Fetch them with "
                                    f"`minimind data download NAME --out {folder}` for NAME in: {names}")
        paths["tokenizer"] = folder / "tokenizer"
        if not (paths["tokenizer"] / "tokenizer.json").exists():
            raise FileNotFoundError(f"no tokenizer in {paths['tokenizer']}: train one with `minimind tokenizer "
                                    f"train --data {paths['pretrain']} --out {paths['tokenizer']}`")
        return paths
    raise ValueError(f"unknown data source {data!r}: use 'course' or 'minimind'")


def stage_done(folder: Path) -> bool:
    return (Path(folder) / "summary.json").exists()


def ensure_stage(stage: str, run_dir, paths: dict, preset: str = "tiny", device: str = "auto",
                 quiet: bool = True, **overrides) -> Path:
    """run_dir/stage, trained with the course recipe unless a finished run is already there (and the stages
    it starts from, first). This is how each notebook runs alone: what it needs is built or reused."""
    run_dir = Path(run_dir)
    out = run_dir / stage
    if stage_done(out):
        return out
    recipe = {**COURSE[stage], **overrides}
    init = ensure_stage(recipe["init"], run_dir, paths, preset, device, quiet) if recipe["init"] else None
    steps = recipe["max_steps"] if preset == "tiny" else None
    train_stage(stage, out, data=paths[recipe["data"]],
                          val_data=paths.get(recipe["val_data"]) if recipe["val_data"] else None,
                          tokenizer=paths["tokenizer"], preset=preset, init=init, max_steps=steps, device=device,
                progress=not quiet, eval_every=steps or 0)
    return out


def sample_callback(tokenizer, prompts: list[str], max_new_tokens: int = 40, chat: bool = False):
    """A train() callback that records greedy continuations of `prompts` at every eval point."""
    import torch

    def callback(step, model):
        samples = []
        for prompt in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True) if chat else prompt
            ids = torch.tensor([tokenizer.encode(text)], device=model.device)
            out = model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)
            samples.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return {"samples": samples}
    return callback
