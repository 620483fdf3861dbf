"""Checkpoint I/O: a folder of config.json + model.safetensors (+ the tokenizer), written atomically and
read without pickle; LoRA run folders are loaded onto their base and merged."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

import torch

from ..data.files import atomic_write
from .config import MiniMindConfig
from .lora import ADAPTER_CONFIG, load_adapter, merge_lora
from .minimind_format import clean_state, has_qk_norm, read_torch_state

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class Checkpointable:
    """save_pretrained / from_pretrained for a module built as cls(config), as transformers' models do.

    `architecture` (a class attribute) is written into config.json when set, so a folder says what it holds.
    """
    architecture: Optional[str] = None

    def save_pretrained(self, path, tokenizer=None) -> Path:
        """Write config.json and model.safetensors (and the tokenizer, if given) into the folder `path`."""
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in state_tensors(self).items()}
        config = {"model_type": "minimind", **({"architectures": [self.architecture]} if self.architecture else {}),
                  **self.config.to_dict()}
        metadata = {"format": "pt", "sha256": tensors_digest(state)}  # load_weights checks it
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=metadata))
        atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return path

    @classmethod
    def from_pretrained(cls, path, config: Optional[MiniMindConfig] = None, device=None, dtype=None):
        """A model from a folder: ours, or a transformers folder written by MiniMind's code (either generation,
        safetensors or pytorch_model.bin); or from a hub id such as "jingyaogong/minimind-3" (downloaded once).
        A weights file works too, with its config.json beside it or `config` given."""
        path = resolve_checkpoint(path)
        file = weights_file(path)
        state = read_weights(file)
        if config is None:
            config = MiniMindConfig.load(path if path.is_dir() else path.parent, qk_norm=has_qk_norm(state))
        model = cls(config)
        model.load_state(state, source=str(file))
        return model.to(device=device, dtype=dtype)

    def load_weights(self, file, strict: bool = True) -> None:
        """Load a weights file (safetensors, or a MiniMind .pth/.bin), naming both shapes when the checkpoint and
        this model disagree."""
        self.load_state(read_weights(file), source=str(file), strict=strict)

    def load_state(self, state: dict, source: str, strict: bool = True) -> None:
        """Load checked tensors: finite, shaped as this model's; a tied output head may be stored once."""
        broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            raise ValueError(f"{source}: NaN or inf values in {broken[:4]}: the run diverged before this save; "
                             "load an earlier checkpoint, or train again with a lower learning rate")
        expected = self.state_dict()
        if self.config.tie_word_embeddings and "lm_head.weight" in expected:
            # transformers may keep either name of a tied pair
            if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
                state["lm_head.weight"] = state["model.embed_tokens.weight"]
            elif "model.embed_tokens.weight" not in state and "lm_head.weight" in state:
                state["model.embed_tokens.weight"] = state["lm_head.weight"]
        check_state_dict(expected, state, source=source, strict=strict)
        self.load_state_dict(state, strict=strict)

    @classmethod
    def load_checkpoint(cls, folder, device=None, dtype=None, tokenizer: bool = True):
        """(model, tokenizer) from a run folder: a plain checkpoint, or a LoRA run (adapter.safetensors +
        adapter_config.json naming its "base"), loaded onto its base and merged into an ordinary model.
        The tokenizer comes from the folder, else from the LoRA base (tokenizer=False: None). Eval mode."""
        folder = resolve_checkpoint(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a checkpoint folder (config.json + model.safetensors, or "
                                    "a LoRA run with adapter.safetensors + adapter_config.json)")
        tok_dirs = [folder]
        if (folder / ADAPTER_CONFIG).exists() and not (folder / WEIGHTS_NAME).exists():
            base = lora_base(folder)
            model = cls.from_pretrained(base)
            merge_lora(load_adapter(model, folder))
            tok_dirs.append(base)
        else:
            model = cls.from_pretrained(folder)
        model = model.to(device=device, dtype=dtype).eval()
        if not tokenizer:
            return model, None
        from ..data.tokenizer import MiniMindTokenizer
        for d in tok_dirs:
            if (d / "tokenizer.json").exists():
                return model, MiniMindTokenizer.from_pretrained(d)
        raise FileNotFoundError(f"no tokenizer.json in {' or '.join(map(str, tok_dirs))}: save the tokenizer "
                                "into the checkpoint (model.save_pretrained(folder, tokenizer=tok))")


def resolve_checkpoint(path) -> Path:
    """A local path as it is; "owner/name" that is not a local path: that hub repository, downloaded into
    huggingface_hub's cache (offline: an error that says how to fetch it by hand)."""
    local = Path(path)
    if local.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) or str(path).startswith("."):
        return local
    from ..data.download import download_model
    return download_model(str(path))


def weights_file(path: Path) -> Path:
    """The weights in a checkpoint folder: ours (model.safetensors), or transformers' pytorch_model.bin."""
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: give a checkpoint folder (config.json + {WEIGHTS_NAME}), "
                                    "a weights file, or a hub id such as jingyaogong/minimind-3")
        return path
    for name in (WEIGHTS_NAME, "pytorch_model.bin"):
        if (path / name).exists():
            return path / name
    if (path / (WEIGHTS_NAME + ".index.json")).exists():
        raise ValueError(f"{path} holds sharded weights (model.safetensors.index.json): MiniMind models fit one "
                         "file; re-save it unsharded (save_pretrained(..., max_shard_size='10GB'))")
    raise FileNotFoundError(f"{path / WEIGHTS_NAME} not found: a MiniMind checkpoint folder holds {WEIGHTS_NAME} "
                            "(or a transformers pytorch_model.bin) beside config.json")


def read_weights(file) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (its checksum checked when it has one), or of a MiniMind .pth/.bin
    state dict through torch's weights-only loader: no pickle code ever runs."""
    file = Path(file)
    if not file.exists():
        raise FileNotFoundError(f"{file} not found: a MiniMind checkpoint folder holds {WEIGHTS_NAME}")
    if file.suffix in (".pth", ".pt", ".bin"):
        return read_torch_state(file)
    from safetensors import safe_open
    from safetensors.torch import load_file
    try:
        state = load_file(str(file))
        with safe_open(str(file), "pt") as f:
            digest = (f.metadata() or {}).get("sha256")
    except Exception as err:  # safetensors raises its own error type for a cut or damaged file
        raise ValueError(f"{file} is not a readable safetensors file ({err}): the checkpoint is damaged or "
                         "was cut short; save it again or restore it") from None
    if digest and digest != tensors_digest(state):  # files written by this package carry one
        raise ValueError(f"{file}: the weights do not match the checksum saved with them: the file was "
                         "damaged after it was written; restore it or save it again")
    return clean_state(state)


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: a weights file's checksum."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_state_dict(expected: dict, found: dict, source: str, strict: bool = True) -> None:
    mismatched = [f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in found and found[k].shape != v.shape]
    missing = [k for k in expected if k not in found] if strict else []
    unexpected = [k for k in found if k not in expected] if strict else []
    if mismatched or missing or unexpected:
        lines = [f"checkpoint {source} does not fit this model's config:"]
        lines += [f"  shape {m}" for m in mismatched[:8]] + [f"  missing {k}" for k in missing[:8]]
        lines += [f"  unexpected {k}" for k in unexpected[:8]]
        lines.append("  fix: load it with the config.json saved beside it (from_pretrained(folder)) or "
                     "pick the preset it was trained with")
        raise ValueError("\n".join(lines))


def lora_base(folder) -> Path:
    """The base checkpoint a LoRA run folder names in adapter_config.json, as a folder that exists:
    the path as written, else relative to the LoRA folder or to its parent."""
    folder = Path(folder)
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base")
    if not base:
        raise ValueError(f"{folder / ADAPTER_CONFIG} names no \"base\" checkpoint: add \"base\": \"PATH\" (the "
                         "folder the adapter was trained on)")
    for cand in (Path(base), folder / base, folder.parent / base):
        if (cand / CONFIG_NAME).exists():
            return cand
    raise FileNotFoundError(f"the base checkpoint {base!r} named in {folder / ADAPTER_CONFIG} was not found "
                            "(tried as written, and relative to the LoRA folder): fix \"base\" there")


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors as saved: the tied output head is stored once, as the embedding."""
    tensors = dict(model.state_dict())
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    return tensors
