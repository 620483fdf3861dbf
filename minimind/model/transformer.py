"""MiniMind: a decoder-only transformer in the Llama mould (RMSNorm, RoPE, GQA, SwiGLU; optional MoE).

Weight names follow transformers' `modeling_llama.py` (`model.layers.0.self_attn.q_proj.weight`, ...), so a
dense checkpoint opens in transformers as `LlamaForCausalLM` and gives the same logits.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import fast
from .attention import Attention, KVCache, build_attention_mask
from .checkpoint import Checkpointable
from .config import MiniMindConfig
from .layers import FeedForward, RMSNorm
from .loss import IGNORE_INDEX, linear_cross_entropy, shift_labels
from .moe import MoEFeedForward
from .rope import inv_freq_for, rope_cos_sin


class CausalLMOutput:
    """What the model returns: loss = ce + aux (aux: the MoE load-balancing loss, in training only).
    When the loss came from the hidden states (loss.py) the logits were never built; `logits` builds them
    on first access, so callers need not care."""

    def __init__(self, logits: Optional[torch.Tensor] = None, ce: Optional[torch.Tensor] = None,
                 aux_loss: Optional[torch.Tensor] = None, past_key_values: Optional[KVCache] = None,
                 hidden_states: Optional[torch.Tensor] = None, head: Optional[nn.Module] = None):
        self._logits, self._head = logits, head
        self.ce, self.aux_loss = ce, aux_loss
        self.loss = None if ce is None else self.with_aux(ce)
        self.past_key_values, self.hidden_states = past_key_values, hidden_states

    def with_aux(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` plus the MoE load-balancing loss when there is one: every stage adds it this way."""
        return loss if self.aux_loss is None else loss + self.aux_loss

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

    def aux_loss(self) -> Optional[torch.Tensor]:
        """The MoE load-balancing loss of the last forward pass, summed over layers; None for a dense
        model and in eval mode (it only steers training)."""
        if not (self.config.use_moe and self.training):
            return None
        return sum(layer.mlp.aux_loss for layer in self.layers)


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for every linear and embedding weight, as MiniMind and transformers' Llama do."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)


class MiniMindForCausalLM(Checkpointable, nn.Module):
    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        init_weights(self, config.initializer_range)
        if config.tie_word_embeddings:  # one matrix reads tokens in and writes them out
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once each (the tied embedding is one matrix)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def num_active_parameters(self) -> int:
        """Parameters one token uses: in an MoE model only top_k of the n routed experts work on a token."""
        routed = sum(p.numel() for n, p in self.named_parameters() if ".mlp.experts." in n)
        c = self.config
        return self.num_parameters() - routed + routed * c.num_experts_per_tok // max(c.n_routed_experts, 1)

    @torch.no_grad()
    def resize_token_embeddings(self, vocab_size: int) -> "MiniMindForCausalLM":
        """Grow the vocabulary (for a tokenizer extended with new tokens, extend_tokenizer): old rows are kept,
        new rows start at the mean of the old ones, so a new token begins as an average token, not as noise
        that the output layer would predict at random."""
        old = self.model.embed_tokens.weight  # (V_old, H)
        if vocab_size < old.shape[0]:
            raise ValueError(f"resize_token_embeddings({vocab_size}): the model has {old.shape[0]} tokens already; "
                             "shrinking would drop trained rows")
        embed = nn.Embedding(vocab_size, old.shape[1], device=old.device, dtype=old.dtype)
        embed.weight[:old.shape[0]] = old
        embed.weight[old.shape[0]:] = old.mean(dim=0)
        self.model.embed_tokens = embed
        if self.config.tie_word_embeddings:
            self.lm_head = nn.Linear(old.shape[1], vocab_size, bias=False, device=old.device, dtype=old.dtype)
            self.lm_head.weight = embed.weight
        else:
            head = self.lm_head.weight  # (V_old, H)
            self.lm_head = nn.Linear(old.shape[1], vocab_size, bias=False, device=old.device, dtype=old.dtype)
            self.lm_head.weight[:head.shape[0]] = head
            self.lm_head.weight[head.shape[0]:] = head.mean(dim=0)
        self.config.vocab_size = vocab_size
        return self

    def forward(self, input_ids, labels=None, attention_mask=None, position_ids=None,
                past_key_values: Optional[KVCache] = None, use_cache: bool = False,
                logits_to_keep: int = 0) -> CausalLMOutput:
        """labels are the input ids themselves (shifted inside, -100 ignored), as in transformers.

        out.ce is the cross-entropy; out.loss adds the MoE load-balancing loss in training mode (in eval
        mode there is none, so perplexities compare across dense and MoE models).
        logits_to_keep=n computes logits for the last n positions only (generation needs one).
        """
        if use_cache and past_key_values is None:
            past_key_values = KVCache(self.config.num_hidden_layers)
        hidden = self.model(input_ids, attention_mask, position_ids, past_key_values)  # (B, T, H)
        aux = self.model.aux_loss()
        logits = ce = None
        targets = None if labels is None else shift_labels(labels)  # (B, T)
        if targets is not None and self._loss_from_hidden(logits_to_keep):  # logits never built (loss.py)
            ce = linear_cross_entropy(hidden, self.lm_head.weight, targets)
        else:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)  # (B, T', V)
            if targets is not None:
                ce = F.cross_entropy(logits.flatten(0, 1).float(), targets[:, -logits.shape[1]:].reshape(-1),
                                     ignore_index=IGNORE_INDEX)
        return CausalLMOutput(logits=logits, ce=ce, aux_loss=aux, head=self.lm_head,
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


def active_parameters(config: MiniMindConfig) -> int:
    """Parameters one token uses, counted on a weightless (meta) model of `config`."""
    with torch.device("meta"):
        return MiniMindForCausalLM(config).num_active_parameters()
