"""Everything a stage needs, built from files: model, tokenizer, datasets, the stage itself; then the loop.

`train_stage` is what `minimind train STAGE ...` and the notebooks call, so both run the same thing.
A stage builder takes the resolved pieces and returns (stage, train_data, val_data).
"""
from __future__ import annotations

import hashlib
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


# name -> builder; the alignment stages register theirs the same way
STAGES: dict[str, Callable] = {"pretrain": _pretrain, "sft": _sft, "reason": _reason, "lora": _lora,
                               "distill": _distill}
SEQ_LEN = {"pretrain": 256, "default": 256}


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
    tok = tokenizer if hasattr(tokenizer, "encode") else load_tokenizer(tokenizer or init)
    if model is None:
        model = build_model(preset, tok, init)
    pieces = dict(data=data, val_data=val_data, tokenizer=tok, init=init, teacher=teacher, model=model,
                  seq_len=seq_len or SEQ_LEN.get(stage, SEQ_LEN["default"]), stage_kwargs=stage_kwargs or {})
    stage_obj, train_data, val = STAGES[stage](pieces)
    known = {f.name for f in fields(TrainArgs)}
    unknown = sorted(set(train_args) - known)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; TrainArgs has {sorted(known)}")
    args = TrainArgs(**{**STAGE_DEFAULTS.get(stage, {}), **train_args})
    summary = train(model, stage_obj, train_data, args, out, val_data=val, tokenizer=tok, resume=resume,
                    callbacks=callbacks)
    summary["model"] = model
    return summary
