"""A real checkpoint folder in a second: a tokenizer trained on a few hundred lines (English and Chinese,
so multi-byte characters occur) and a small random MiniMind model. Shared by the chat, serve, eval and
export tests."""
from pathlib import Path

import torch

from minimind import MiniMindConfig, MiniMindForCausalLM

LINES = [f"Mira the baker lives in Tallow and likes {food}. {a} plus {b} is {a + b}."
         for food in ("apples", "bread", "soup", "honey", "plums") for a in range(6) for b in range(8)]
LINES += ["你好，我是一个小模型。今天天气很好。", "<think>Let me add the numbers.</think> The answer is 7."] * 20


def make_tokenizer(vocab_size: int = 400):
    from minimind.data.tokenizer import train_tokenizer
    return train_tokenizer(LINES, vocab_size=vocab_size)


def make_checkpoint(folder, context: int = 256, seed: int = 0, **overrides) -> Path:
    tok = make_tokenizer()
    config = MiniMindConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=context,
                            **overrides)
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(config)
    with torch.no_grad():  # larger than the 0.02 init, so that greedy replies vary (as in conftest)
        for p in model.parameters():
            p.normal_(0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model.save_pretrained(folder, tokenizer=tok)


class ScriptedModel:
    """Stands in for a model: stream_generate yields the ids of a fixed reply, then EOS, and records how it
    was called. Lets tests check what is done with a known output (<think> splitting, stop strings)."""

    def __init__(self, tokenizer, reply: str, context: int = 256, delay: float = 0.0):
        from minimind import MiniMindConfig
        self.tokenizer, self.reply_ids = tokenizer, tokenizer.encode(reply)
        self.config = MiniMindConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=context)
        self.device = torch.device("cpu")
        self.calls: list[dict] = []
        self.delay = delay

    def eval(self):
        return self

    def num_parameters(self):
        return 0

    def stream_generate(self, input_ids, max_new_tokens=64, **kwargs):
        import time
        self.calls.append({"prompt": input_ids[0].tolist(), "max_new_tokens": max_new_tokens, **kwargs})
        for t in (self.reply_ids + [self.tokenizer.eos_token_id])[:max_new_tokens]:
            if self.delay:
                time.sleep(self.delay)
            yield torch.tensor([t])


def make_lora_run(base, folder, std: float = 0.1, rank: int = 2, alpha: float = 4.0):
    """A LoRA run folder on the checkpoint `base`, its B matrices set non-zero as if trained.
    Returns (folder, model): the model still carries the (unmerged) adapters."""
    from minimind.model import load_checkpoint
    from minimind.model.lora import apply_lora, save_adapter
    model, _ = load_checkpoint(base)
    apply_lora(model, rank=rank, alpha=alpha)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return save_adapter(model, folder, base=str(base)), model
