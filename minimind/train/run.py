"""`train_stage`: one stage trained from files (model, tokenizer, datasets, the registered stage), what
`minimind train STAGE` and the notebooks call, so both run the same thing."""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Optional

import torch

from ..data.datasets import DPODataset, PretrainDataset, RLPromptDataset, SFTDataset, token_file_for, tokenize_pretrain
from ..data.tokenizer import MiniMindTokenizer
from ..model import MiniMindConfig, MiniMindForCausalLM
from .loop import TrainArgs, train
from .stages import STAGES, StageInputs

DEFAULT_SEQ_LEN = 256  # tokens per sample unless --seq-len says otherwise


def pretrain_windows(path, tokenizer, seq_len: int) -> PretrainDataset:
    """Packed windows of a pretraining JSONL, tokenized once into a token file beside it."""
    bin_path = token_file_for(Path(path), tokenizer)
    if not bin_path.exists():
        tokenize_pretrain(path, tokenizer, bin_path)
    return PretrainDataset(bin_path, seq_len)


def rl_prompts(path, tokenizer, seq_len: int) -> RLPromptDataset:
    return RLPromptDataset(path, tokenizer, max_len=seq_len)


# a stage's `data` kind -> the dataset that reads its files
DATASETS = {"pretrain": pretrain_windows, "sft": SFTDataset, "dpo": DPODataset, "rl": rl_prompts}


def load_tokenizer(path) -> MiniMindTokenizer:
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
    """Train one stage from files into the run folder `out`; returns the loop's summary (with "model").

    tokenizer: a folder (or a MiniMindTokenizer); defaults to init's folder. stage_kwargs are the stage's
    options (`STAGES[stage].options`); train_args are TrainArgs fields, over the stage's defaults.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    cls = STAGES[stage]
    if data is None:
        raise ValueError(f"{stage} needs --data FILE")
    if not Path(data).exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if Path(data).is_dir():
        raise ValueError(f"--data {data} is a folder: name the JSONL file inside it")
    if tokenizer is None and init is None:
        raise ValueError(f"{stage} needs --tokenizer DIR (or --init CKPT, whose tokenizer it then uses)")
    known = {f.name for f in fields(TrainArgs)}
    unknown = sorted(set(train_args) - known)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; TrainArgs has {sorted(known)}")
    options = cls.resolve_options(stage_kwargs or {})
    tok = load_tokenizer(tokenizer or init) if isinstance(tokenizer, (str, Path, type(None))) else tokenizer
    if model is None:
        torch.manual_seed(train_args.get("seed", 0))  # the same fresh weights every time
        model = build_model(preset, tok, init)
    inputs = StageInputs(tokenizer=tok, model=model, init=init, teacher=teacher)
    stage_obj = cls.build(inputs, **options)
    read = DATASETS[cls.data]
    seq_len = seq_len or DEFAULT_SEQ_LEN
    train_data = read(data, tok, seq_len)
    # RL stages report held-out accuracy instead of a validation loss (which would be a fresh rollout's)
    val = read(val_data, tok, seq_len) if val_data and cls.data != "rl" else None
    args = TrainArgs(**{**cls.defaults, **train_args})
    summary = train(inputs.model, stage_obj, train_data, args, out, val_data=val, tokenizer=tok, resume=resume,
                    callbacks=callbacks)
    if int(os.environ.get("RANK", 0)) == 0:  # marks the run finished (ensure_stage reuses it)
        Path(out, "summary.json").write_text(json.dumps({"stage": stage, **summary}, indent=2, default=str) + "\n")
    summary["model"] = inputs.model
    return summary
