"""`minimind import FILE.pth`: a state dict saved by MiniMind's own training scripts (`full_sft_512.pth`,
`pretrain_768.pth`, `full_sft_768_moe.pth`, ...) into a checkpoint folder of this course."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch

from ..model.checkpoint import check_state_dict
from ..model.config import MiniMindConfig
from ..model.minimind_format import config_fields_from_state, read_torch_state
from ..model.transformer import MiniMindForCausalLM
from .export import TOKENIZER_FILES

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def import_pth(file, out, preset: Optional[str] = None, dtype: str = "keep", heads: int = 8,
               experts_per_token: Optional[int] = None, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ the tokenizer files of folder `tokenizer`) into `out`.

    The config is the preset's when one is given, else read from the tensor shapes (see
    minimind_format.config_fields_from_state for what shapes cannot say). dtype "keep" keeps the file's
    (MiniMind saves fp16); "float32", "float16" or "bfloat16" casts."""
    file = Path(file)
    state = read_torch_state(file)
    if preset:
        config = MiniMindConfig.from_preset(preset)
        with torch.device("meta"):
            expected = MiniMindForCausalLM(config).state_dict()
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
            expected.pop("lm_head.weight")
        check_state_dict(expected, state, source=f"{file} (as preset {preset})")
    else:
        config = MiniMindConfig(**config_fields_from_state(state, heads, experts_per_token))
    if dtype == "keep":
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        target = max(set(floats), key=floats.count) if floats else torch.float32
    elif dtype in DTYPES:
        target = DTYPES[dtype]
    else:
        raise ValueError(f"dtype {dtype!r}: use keep, {', '.join(DTYPES)}")
    model = MiniMindForCausalLM(config)
    model.load_state(state, source=str(file))
    out = Path(out)
    model.to(target).save_pretrained(out)
    if tokenizer is not None:
        tok = Path(tokenizer)
        if not (tok / "tokenizer.json").exists():
            raise FileNotFoundError(f"{tok / 'tokenizer.json'} not found: --tokenizer takes the folder holding "
                                    "MiniMind's tokenizer.json and tokenizer_config.json (its model/ folder)")
        for name in TOKENIZER_FILES:
            if (tok / name).exists():
                shutil.copyfile(tok / name, out / name)
    return out
