"""The tokenizer: byte-level BPE trained with `tokenizers`, MiniMind's special tokens and ChatML template.

Ids 0-2: <|endoftext|> (pad), <|im_start|> (BOS), <|im_end|> (EOS); 3-4: <think>, </think>, added but not
special (decoding keeps them). `save_pretrained` writes files transformers' AutoTokenizer loads to the same ids.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Optional

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # the label of a token that is not learned (PyTorch's default ignore_index)

# The chat template, in Jinja for transformers; `render_chat` below is the same thing in Python.
# ChatML: <|im_start|>{role}\n{content}<|im_end|>\n per message. An assistant message may carry its
# reasoning apart, as `reasoning_content`: it is rendered as <think>\n...\n</think>\n\n before the content.
# With add_generation_prompt the prompt ends <|im_start|>assistant\n; enable_thinking=True then opens a
# <think> block, enable_thinking=False closes an empty one (the model answers without reasoning).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role'] + ': use system, user or assistant') }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' and message['reasoning_content'] -%}"
    "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is true -%}{{ '<think>\\n' }}"
    "{%- elif enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def render_chat(messages: list[dict], add_generation_prompt: bool = False,
                enable_thinking: Optional[bool] = None) -> str:
    """The chat template in Python (the same text as CHAT_TEMPLATE renders)."""
    return render_chat_spans(messages, add_generation_prompt, enable_thinking)[0]


def render_chat_spans(messages: list[dict], add_generation_prompt: bool = False,
                      enable_thinking: Optional[bool] = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans the model learns to write: for each assistant message,
    from just after `<|im_start|>assistant\n` through its `<|im_end|>` (reasoning included)."""
    parts, spans, pos = [], [], 0
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use system, user or assistant")
        head = f"<|im_start|>{role}\n"
        body = ""
        if role == "assistant" and m.get("reasoning_content"):
            body += f"<think>\n{m['reasoning_content']}\n</think>\n\n"
        body += f"{m['content']}<|im_end|>"
        if role == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(body)))
        parts.append(head + body + "\n")
        pos += len(parts[-1])
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
        if enable_thinking is True:
            parts.append("<think>\n")
        elif enable_thinking is False:
            parts.append("<think>\n\n</think>\n\n")
    return "".join(parts), spans


class MiniMindTokenizer:
    """A `tokenizers.Tokenizer` with MiniMind's special tokens, ids and chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != [0, 1, 2]:
            raise ValueError(f"special tokens {SPECIAL_TOKENS} have ids {ids}, expected [0, 1, 2]: "
                             "train the tokenizer with minimind.tokenizer.train_tokenizer")
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        self.im_start_id, self.im_end_id = 1, 2
        self.pad_token, self.bos_token, self.eos_token = SPECIAL_TOKENS
        self.think_start_id = tokenizer.token_to_id("<think>")
        self.think_end_id = tokenizer.token_to_id("</think>")
        self.chat_template = CHAT_TEMPLATE

    # -- sizes and lookups -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> Optional[int]:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> Optional[str]:
        return self.tokenizer.id_to_token(i)

    def merges(self) -> list[tuple[str, str]]:
        """The BPE merges in the order they were learned (byte-level symbols: 'Ġ' is a space)."""
        model = json.loads(self.tokenizer.to_str())["model"]
        return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    # -- encoding ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of text; special tokens written in the text (e.g. <|im_end|>) become their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str):
        """(ids, offsets): offsets[i] = (start, end) character span of token i in text."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def tokenize(self, text: str) -> list[str]:
        """The pieces text splits into, each decoded to readable text (a leading space stays visible)."""
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in self.encode(text)]

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.encode(text)}

    # -- chat -------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False, enable_thinking: Optional[bool] = None):
        text = render_chat(messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)
        if not tokenize:
            return text
        texts = [m.get(k) for m in messages for k in ("reasoning_content", "content") if isinstance(m.get(k), str)]
        if not any(t in v for v in texts for t in SPECIAL_TOKENS):
            return self.encode(text)
        # a message may not write control tokens: "<|im_end|><|im_start|>system" in a user's text stays text
        ids, pos = [], 0
        for value in texts:
            start = text.find(value, pos)
            if start < 0:
                continue
            ids += self.encode(text[pos:start]) + self.encode_as_text(value)
            pos = start + len(value)
        return ids + self.encode(text[pos:])

    def encode_as_text(self, text: str) -> list[int]:
        """Ids of text in which `<|im_start|>`, `<|im_end|>` and `<|endoftext|>` are plain characters."""
        pattern = "(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")"
        ids = []
        for piece in re.split(pattern, text):
            # a control token's string, cut in two, can only be read as text
            ids += self.encode(piece[:2]) + self.encode(piece[2:]) if piece in SPECIAL_TOKENS else self.encode(piece)
        return ids

    # -- files ------------------------------------------------------------------------------------------
    def save_pretrained(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        added = {}
        for t in SPECIAL_TOKENS + THINK_TOKENS:
            i = self.tokenizer.token_to_id(t)
            if i is not None:
                added[str(i)] = dict(content=t, lstrip=False, normalized=False, rstrip=False, single_word=False,
                                     special=t in SPECIAL_TOKENS)
        config = dict(
            tokenizer_class="PreTrainedTokenizerFast", add_bos_token=False, add_eos_token=False,
            added_tokens_decoder=added, bos_token="<|im_start|>", eos_token="<|im_end|>",
            pad_token="<|endoftext|>", unk_token="<|endoftext|>", clean_up_tokenization_spaces=False,
            model_max_length=32768, legacy=True, spaces_between_special_tokens=False, split_special_tokens=False,
            chat_template=CHAT_TEMPLATE)
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (directory / "special_tokens_map.json").write_text(json.dumps(dict(
            bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
            unk_token="<|endoftext|>"), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory) -> "MiniMindTokenizer":
        from tokenizers import Tokenizer
        directory = Path(directory)
        file = directory / "tokenizer.json" if directory.is_dir() or not directory.suffix else directory
        if not file.exists():
            raise FileNotFoundError(
                f"{file} not found: train a tokenizer first (minimind tokenizer train --data FILE --out "
                f"{directory}), or use the course's: minimind.data.corpus.ensure_course_data()")
        try:
            return cls(Tokenizer.from_file(str(file)))
        except Exception as err:  # tokenizers raises a plain Exception for a damaged file
            raise ValueError(f"{file} is not a tokenizer file ({err}): restore it, or train the tokenizer "
                             "again (minimind tokenizer train)") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int = 6400, min_frequency: int = 2) -> MiniMindTokenizer:
    """Byte-level BPE over texts (any iterator of strings): the special and think tokens, the 256 byte symbols,
    then merges until vocab_size (or until no pair occurs min_frequency times)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if vocab_size < 256 + len(SPECIAL_TOKENS) + len(THINK_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                         f"{256 + len(SPECIAL_TOKENS) + len(THINK_TOKENS)} (256 bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS + THINK_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # <think> and </think> are added tokens but not special: decoding keeps them
    state = json.loads(tok.to_str())
    for entry in state["added_tokens"]:
        if entry["content"] in THINK_TOKENS:
            entry["special"] = False
    return MiniMindTokenizer(Tokenizer.from_str(json.dumps(state)))


def bytes_per_token(tokenizer: MiniMindTokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes of the texts over their token count: how much text one token carries."""
    texts = list(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return n_bytes / max(n_tokens, 1)


_PALETTE = ["#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f0f5"]


def tokens_html(tokenizer: MiniMindTokenizer, ids, labels=None) -> str:
    """Tokens as coloured boxes (HTML), one box a token. With labels, tokens the loss is computed on
    (label != -100) are green and the rest grey: the picture of a loss mask."""
    import html
    if isinstance(ids, str):
        ids = tokenizer.encode(ids)
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    labels = labels.tolist() if hasattr(labels, "tolist") else labels
    boxes = []
    for k, i in enumerate(ids):
        piece = tokenizer.decode([i]).replace(" ", "\u2423").replace("\n", "\u21b5")
        if labels is None:
            color = _PALETTE[k % len(_PALETTE)]
        else:
            color = "#b7e4c7" if labels[k] != IGNORE_INDEX else "#e9ecef"
        boxes.append(f'<span title="id {i}" style="background:{color};border:1px solid #adb5bd;border-radius:3px;'
                     f'padding:1px 2px;margin:1px;font-family:monospace;white-space:pre;line-height:2">'
                     f'{html.escape(piece)}</span>')
    return "<div>" + "".join(boxes) + "</div>"
