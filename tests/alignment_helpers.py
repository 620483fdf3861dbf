"""Small fixtures for the alignment tests (DPO, reward model, PPO/GRPO/SPO): a character-level toy
tokenizer with MiniMind's special ids, toy prompts and synthetic preference pairs."""
import re

import torch
from conftest import small_config

from minimind.data.tokenizer import render_chat

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.?\n"


class ToyTokenizer:
    """One id per character (ids 3..), MiniMind's special ids 0, 1, 2 and its ChatML template."""
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    vocab_size = 3 + len(ALPHABET)

    def encode(self, text):
        ids = []
        for piece in re.split(r"(<\|endoftext\|>|<\|im_start\|>|<\|im_end\|>)", text):
            ids += [SPECIALS.index(piece)] if piece in SPECIALS else [3 + ALPHABET.index(c) for c in piece.lower()
                                                                       if c in ALPHABET]
        return ids

    def decode(self, ids, skip_special_tokens=False):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return "".join(ALPHABET[i - 3] if i >= 3 else ("" if skip_special_tokens else SPECIALS[i]) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = render_chat(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text) if tokenize else text


def toy_model(tokenizer=None, seed=0, **kw):
    from minimind import MiniMindForCausalLM
    torch.manual_seed(seed)
    return MiniMindForCausalLM(small_config(vocab_size=(tokenizer or ToyTokenizer()).vocab_size, **kw))


def prompt_items(tokenizer, n=8):
    """Arithmetic prompts with their answers, as an RL prompt dataset gives them."""
    items = []
    for i in range(n):
        a, b = i % 4, 3 * i  # prompts of different lengths: the batch is left-padded
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"what is {a} plus {b}?"}],
                                             add_generation_prompt=True)
        items.append({"prompt": text, "prompt_ids": tokenizer.encode(text), "answer": str(a + b)})
    return items


def preference_item(tokenizer, question, chosen, rejected):
    """{chosen,rejected}_{input_ids,labels} with the labels on the answer only, as DPODataset makes them."""
    item = {}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    n_prompt = len(tokenizer.encode(prompt))
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        ids = tokenizer.encode(prompt + answer + "<|im_end|>")
        item[f"{side}_input_ids"] = torch.tensor(ids)
        item[f"{side}_labels"] = torch.tensor([-100] * n_prompt + ids[n_prompt:])
    return item


def preference_items(tokenizer, n=16, seed=0):
    """Pairs that differ systematically: the chosen answer is right and polite, the rejected one is a
    rude refusal."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        a, b = torch.randint(0, 9, (2,), generator=g).tolist()
        items.append(preference_item(tokenizer, f"what is {a} plus {b}?", f"{a} plus {b} is {a + b}.",
                                     "go away."))
    return items


_BPE = {}


def bpe_tokenizer():
    """A real (tiny) MiniMind byte-level BPE tokenizer, trained once per test session."""
    if "tok" not in _BPE:
        from minimind.data.tokenizer import train_tokenizer
        texts = ["what is 3 plus 4? 3 plus 4 is 7. go away. <think>\nsome thought\n</think>\nyes.",
                 "Ada lives in Rivertown. Bo is a baker. what is 2 plus 2? 2 plus 2 is 4."] * 40
        _BPE["tok"] = train_tokenizer(texts, vocab_size=320)
    return _BPE["tok"]
