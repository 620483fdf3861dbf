"""MiniMind: a decoder-only transformer in the Llama mould (RMSNorm, RoPE, GQA, SwiGLU; optional MoE).

Weight names follow transformers' `modeling_llama.py` (`model.layers.0.self_attn.q_proj.weight`, ...), so a
dense checkpoint opens in transformers as `LlamaForCausalLM` and gives the same logits.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import fast
from .attention import Attention, KVCache, build_attention_mask
from .config import MiniMindConfig
from .layers import FeedForward, RMSNorm
from .loss import linear_cross_entropy
from .moe import MoEFeedForward
from .rope import inv_freq_for, rope_cos_sin

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CausalLMOutput:
    """What the model returns. When the loss was computed from the hidden states (see loss.py), the
    logits were never built; `logits` computes them on first access, so callers need not care."""

    def __init__(self, logits: Optional[torch.Tensor] = None, loss: Optional[torch.Tensor] = None,
                 aux_loss: Optional[torch.Tensor] = None, past_key_values: Optional[KVCache] = None,
                 hidden_states: Optional[torch.Tensor] = None, head: Optional[nn.Module] = None):
        self._logits, self._head = logits, head
        self.loss, self.aux_loss = loss, aux_loss
        self.past_key_values, self.hidden_states = past_key_values, hidden_states

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None and self._head is not None:
            self._logits = self._head(self.hidden_states)
        return self._logits


class DecoderLayer(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)): the pre-norm residual block."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = (MoEFeedForward(config) if config.use_moe
                    else FeedForward(config.hidden_size, config.intermediate_size, config.dropout))

    def forward(self, x, cos, sin, mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class MiniMindModel(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        inv_freq, self.attention_factor = inv_freq_for(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache: Optional[KVCache] = None):
        b, t = input_ids.shape
        past = len(cache) if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:  # left padding: count real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + t]
            else:
                position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        if past + t > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past + t} tokens is longer than max_position_embeddings="
                             f"{self.config.max_position_embeddings}; shorten the input or use rope_scaling")
        cos, sin = rope_cos_sin(self.inv_freq, position_ids, self.attention_factor)
        mask = build_attention_mask(attention_mask, t, past + t, input_ids.device)
        x = self.dropout(self.embed_tokens(input_ids))
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return self.norm(x)


class MiniMindForCausalLM(nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:  # one matrix reads tokens in and writes them out
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once each (the tied embedding is one matrix)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def aux_loss(self) -> torch.Tensor:
        losses = [layer.mlp.aux_loss for layer in self.model.layers if isinstance(layer.mlp, MoEFeedForward)]
        return sum(losses) if losses else torch.zeros((), device=self.device)

    def forward(self, input_ids, labels=None, attention_mask=None, position_ids=None,
                past_key_values: Optional[KVCache] = None, use_cache: bool = False,
                logits_to_keep: int = 0) -> CausalLMOutput:
        """labels are the input ids themselves (shifted inside, -100 ignored), as in transformers.

        In training mode the MoE load-balancing loss is added to `loss`; in eval mode `loss` is the
        plain cross-entropy (so perplexities compare across dense and MoE models).
        logits_to_keep=n computes logits for the last n positions only (generation needs one).
        """
        if use_cache and past_key_values is None:
            past_key_values = KVCache(self.config.num_hidden_layers)
        hidden = self.model(input_ids, attention_mask, position_ids, past_key_values)
        aux = self.aux_loss() if self.config.use_moe else None
        logits = loss = None
        # shift the labels, not the logits: position t is scored on token t+1, the last on nothing
        targets = None if labels is None else F.pad(labels[:, 1:], (0, 1), value=-100)
        if targets is not None and self._loss_from_hidden(logits_to_keep):  # logits never built (loss.py)
            loss = linear_cross_entropy(hidden, self.lm_head.weight, targets)
        else:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
            if targets is not None:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets[:, -logits.shape[1]:].reshape(-1),
                                       ignore_index=-100)
        if loss is not None and aux is not None and self.training:
            loss = loss + aux
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux, head=self.lm_head,
                              past_key_values=past_key_values if use_cache else None, hidden_states=hidden)

    def _loss_from_hidden(self, logits_to_keep: int) -> bool:
        """The chunked loss (fast.py's "loss") needs a plain output head (not a LoRA wrapper) and all
        positions."""
        return (fast.use("loss") and not logits_to_keep and type(self.lm_head) is nn.Linear
                and self.lm_head.bias is None)

    # -- generation (see generation.py) ----------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int = 64, **kwargs) -> torch.Tensor:
        """Prompt plus continuation, (batch, prompt + new). See generation.stream_generate for options."""
        from .generation import generate
        return generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)

    def stream_generate(self, input_ids, max_new_tokens: int = 64, **kwargs):
        """Yield the next token ids (batch,) one step at a time."""
        from .generation import stream_generate
        return stream_generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)

    # -- checkpoints -----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, tokenizer=None) -> Path:
        """Write config.json and model.safetensors (and the tokenizer, if given) into the folder `path`.

        Each file is written to a temporary name and renamed into place, so a crash mid-write never
        leaves a half-written file under the real name.
        """
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # stored once, as the embedding
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write(path / CONFIG_NAME, lambda tmp: self.config.save(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, config: Optional[MiniMindConfig] = None,
                        device=None, dtype=None) -> "MiniMindForCausalLM":
        path = Path(path)
        config = config or MiniMindConfig.load(path)
        model = cls(config)
        model.load_weights(path / WEIGHTS_NAME if path.is_dir() else path)
        return model.to(device=device, dtype=dtype)

    def load_weights(self, file: str | Path, strict: bool = True) -> None:
        """Load a safetensors file, naming both shapes when the checkpoint and this model disagree."""
        from safetensors.torch import load_file
        file = Path(file)
        if not file.exists():
            raise FileNotFoundError(f"{file} not found: a MiniMind checkpoint folder holds {WEIGHTS_NAME}")
        state = load_file(str(file))
        if self.config.tie_word_embeddings and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        check_state_dict(self.state_dict(), state, source=str(file), strict=strict)
        self.load_state_dict(state, strict=strict)


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


def atomic_write(target: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path onto target: readers see the old file or the new one."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(folder: str | Path, device=None, dtype=None, tokenizer: bool = True):
    """(model, tokenizer) from a run folder: a plain checkpoint, or a LoRA run (adapter.safetensors +
    adapter_config.json naming its "base"), which is loaded onto its base and merged, so the result is an
    ordinary model. The tokenizer comes from the folder, else from the LoRA base; tokenizer=False skips
    it (returns None). The model is in eval mode.
    """
    from .lora import ADAPTER_CONFIG, load_adapter, merge_lora
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (config.json + model.safetensors, or a "
                                "LoRA run with adapter.safetensors + adapter_config.json)")
    tok_dirs = [folder]
    if (folder / ADAPTER_CONFIG).exists() and not (folder / WEIGHTS_NAME).exists():
        base = lora_base(folder)
        model = MiniMindForCausalLM.from_pretrained(base)
        merge_lora(load_adapter(model, folder))
        tok_dirs.append(base)
    else:
        model = MiniMindForCausalLM.from_pretrained(folder)
    model = model.to(device=device, dtype=dtype).eval()
    if not tokenizer:
        return model, None
    from .tokenizer import MiniMindTokenizer
    for d in tok_dirs:
        if (d / "tokenizer.json").exists():
            return model, MiniMindTokenizer.from_pretrained(d)
    raise FileNotFoundError(f"no tokenizer.json in {' or '.join(map(str, tok_dirs))}: save the tokenizer into "
                            "the checkpoint (model.save_pretrained(folder, tokenizer=tok))")


def lora_base(folder: str | Path) -> Path:
    """The base checkpoint a LoRA run folder names in adapter_config.json, as a folder that exists:
    the path as written, else relative to the LoRA folder or to its parent."""
    from .lora import ADAPTER_CONFIG
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
