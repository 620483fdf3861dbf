"""Token-by-token generation with a KV cache: greedy, temperature, top-k, top-p, repetition penalty."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ..data.datasets import pad_sequences
from .attention import KVCache


def process_logits(logits: torch.Tensor, generated: Optional[torch.Tensor] = None, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Reshape next-token logits (batch, vocab) before sampling; filtered-out tokens get -inf."""
    logits = logits.float()
    if repetition_penalty != 1.0 and generated is not None and generated.numel():
        # CTRL-style: make every token already in the sequence less likely, whatever its sign
        seen = logits.gather(1, generated)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        logits = logits.scatter(1, generated, seen)
    if temperature != 1.0:
        logits = logits / max(temperature, 1e-5)
    if top_k and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the more likely ones already cover top_p (the first one always stays)
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def stream_generate(model, input_ids: torch.Tensor, max_new_tokens: int = 64, do_sample: bool = False,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    repetition_penalty: float = 1.0, eos_token_id: Optional[int] = None,
                    attention_mask: Optional[torch.Tensor] = None,
                    generator: Optional[torch.Generator] = None,
                    shared_prefix: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (batch,), until max_new_tokens or every row has hit EOS.

    Rows that already ended keep receiving eos_token_id, so the batch stays rectangular. Prompts of
    different lengths are left-padded, with attention_mask marking real tokens (1) and padding (0).
    shared_prefix: token ids (1, P) that come before input_ids in every row (a system turn with tools): run
    once, their keys and values expanded to the batch (`KVCache.expand`); the rows' padding then sits between
    the prefix and their own tokens, which the attention mask and positions allow for.
    """
    was_training = model.training
    model.eval()
    try:
        cache, b = None, input_ids.shape[0]
        if shared_prefix is not None:
            cache = KVCache(model.config.num_hidden_layers)
            model(shared_prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = cache.expand(b)
            if attention_mask is not None:  # (B, P + T): [prefix | padding | own tokens]
                attention_mask = torch.cat([attention_mask.new_ones(b, shared_prefix.shape[1]), attention_mask], 1)
        past = len(cache) if cache is not None else 0
        max_new_tokens = min(max_new_tokens, model.config.max_position_embeddings - past - input_ids.shape[1])
        out = model(input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
        generated = input_ids
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max(max_new_tokens, 0)):
            logits = process_logits(out.logits[:, -1], generated, temperature if do_sample else 1.0,
                                    top_k if do_sample else 0, top_p if do_sample else 1.0, repetition_penalty)
            if do_sample:
                token = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(dim=-1)
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            yield token
            if eos_token_id is not None and finished.all():  # a host sync: only when rows can end
                return
            generated = torch.cat([generated, token[:, None]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(token.shape[0], 1)], 1)
            out = model(token[:, None], attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int = 64, **kwargs) -> torch.Tensor:
    tokens = list(stream_generate(model, input_ids, max_new_tokens, **kwargs))
    if not tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)


@torch.no_grad()
def complete_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 48, batch_size: int = 32,
                   **kwargs) -> list[str]:
    """Decoded continuations of token-id prompts, up to <|im_end|>: left-padded batches, KV-cached
    decoding. kwargs go to stream_generate (do_sample, temperature, top_p, ...)."""
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        # left padding: every prompt ends where generation starts
        ids, mask = pad_sequences(chunk, tokenizer.pad_token_id, side="left")  # (B, P) each
        width = ids.shape[1]
        out = generate(model, ids.to(model.device), max_new_tokens, attention_mask=mask.to(model.device),
                       eos_token_id=tokenizer.eos_token_id, **kwargs)
        for row in out[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[:row.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def generate_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 48,
                     batch_size: int = 32, **kwargs) -> list[str]:
    """The assistant's reply to each conversation (rendered with the chat template)."""
    prompts = [tokenizer.encode(tokenizer.apply_chat_template(c, add_generation_prompt=True)) for c in conversations]
    return [t.strip() for t in complete_batch(model, tokenizer, prompts, max_new_tokens, batch_size, **kwargs)]
