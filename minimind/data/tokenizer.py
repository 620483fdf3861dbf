"""The tokenizer: byte-level BPE trained with `tokenizers`, MiniMind's special tokens and chat templates.

Ids 0-2: <|endoftext|> (pad), <|im_start|> (BOS), <|im_end|> (EOS). A course tokenizer adds <think>, </think>
(3-4), added but not special (decoding keeps them); one trained with template="minimind3" adds minimind-3's
36 tokens instead. `save_pretrained` writes files transformers' AutoTokenizer loads to the same ids.

Three chat templates, each rendered here in Python and saved in Jinja for transformers (`template`):
"minimind" (the course's ChatML), "minimind2" (MiniMind2's: a default system turn, tools) and "minimind3"
(minimind-3's, Qwen3-like: tools, a <think> block in every assistant turn, tool calls and tool responses).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Optional

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
ROLES = ("system", "user", "assistant")
TOOL_ROLES = ROLES + ("tool",)  # the roles of MiniMind2's and minimind-3's templates
TOOL_TEMPLATES = ("minimind2", "minimind3")  # the chat templates that render tools, calls and their results
IGNORE_INDEX = -100  # the label of a token that is not learned (PyTorch's default ignore_index)

# minimind-3's added tokens in id order (0-35), as MiniMind's trainer/train_tokenizer.py makes them: the
# special ones (skipped when decoding without special tokens), then tags the model writes as text
MINIMIND3_SPECIAL_TOKENS = SPECIAL_TOKENS + [
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|audio_start|>",
    "<|audio_end|>", "<|audio_pad|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>"]
MINIMIND3_TEXT_TOKENS = (["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"] + THINK_TOKENS
                         + [f"<|buffer{i}|>" for i in range(1, 10)])

# The course chat template, in Jinja for transformers; `render_chat` below is the same thing in Python.
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

# MiniMind's own templates, verbatim from its model/tokenizer_config.json (MiniMind2: commit 4014e62,
# minimind-3: 101d7df), kept as templates/*.jinja (package data); `render_chat` renders them in Python, tests check
# it against these in Jinja. Each file ends in one newline the template lacks: it is taken off again.
TEMPLATE_DIR = Path(__file__).parent / "templates"


def _jinja(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8").removesuffix("\n")


MINIMIND2_CHAT_TEMPLATE = _jinja("minimind2")
MINIMIND3_CHAT_TEMPLATE = _jinja("minimind3")

CHAT_TEMPLATES = {"minimind": CHAT_TEMPLATE, "minimind2": MINIMIND2_CHAT_TEMPLATE, "minimind3": MINIMIND3_CHAT_TEMPLATE}
TRAINABLE_TEMPLATES = ("minimind", "minimind3")  # MiniMind2's tokenizer is MiniMind's to train, not ours
_ADDED_TOKENS = {"minimind": [(t, True) for t in SPECIAL_TOKENS] + [(t, False) for t in THINK_TOKENS],
                 "minimind3": [(t, True) for t in MINIMIND3_SPECIAL_TOKENS]
                 + [(t, False) for t in MINIMIND3_TEXT_TOKENS]}

_TOOLS_INTRO = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n")
_EMPTY_THINK = "<think>\n\n</think>\n\n"


def detect_template(chat_template: Optional[str]) -> Optional[str]:
    """The name of a Jinja chat template ("minimind", "minimind2", "minimind3"), None if it is none of them.
    An edited copy of MiniMind's is recognised by what only it renders: tool calls, and reasoning_content."""
    if not chat_template:
        return "minimind"  # a course tokenizer saved without a template
    for name, jinja in CHAT_TEMPLATES.items():
        if chat_template == jinja:
            return name
    if "<tool_call>" in chat_template:
        return "minimind3" if "reasoning_content" in chat_template else "minimind2"
    return None


class _Rendering:
    """Rendered text as pieces, each marked whether a message wrote it, and the assistant spans."""

    def __init__(self):
        self.pieces: list[tuple[str, bool]] = []
        self.spans: list[tuple[int, int]] = []
        self.pos = 0

    def add(self, text: str, from_message: bool = False):
        if text:
            self.pieces.append((text, from_message))
            self.pos += len(text)

    @property
    def text(self) -> str:
        return "".join(p for p, _ in self.pieces)


def render_chat(messages: list[dict], add_generation_prompt: bool = False,
                enable_thinking: Optional[bool] = None, *, template: str = "minimind", tools: Optional[list] = None,
                open_thinking: bool = False) -> str:
    """The chat template in Python (the same text as its Jinja, CHAT_TEMPLATES[template], renders)."""
    return _render(messages, template, tools, add_generation_prompt, enable_thinking, open_thinking).text


def render_chat_spans(messages: list[dict], add_generation_prompt: bool = False,
                      enable_thinking: Optional[bool] = None, *, template: str = "minimind",
                      tools: Optional[list] = None, open_thinking: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans the model learns to write: for each assistant message,
    from just after `<|im_start|>assistant\n` through its `<|im_end|>` (reasoning and tool calls included;
    tool responses, in user turns, are not)."""
    out = _render(messages, template, tools, add_generation_prompt, enable_thinking, open_thinking)
    return out.text, out.spans


def _render(messages, template, tools, add_generation_prompt, enable_thinking, open_thinking) -> _Rendering:
    if template not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}: use one of {', '.join(CHAT_TEMPLATES)}")
    if open_thinking and enable_thinking is False:
        raise ValueError("open_thinking=True and enable_thinking=False contradict each other: pass one of them")
    if template == "minimind":
        if tools:
            raise ValueError("the course chat template (template='minimind') has no tools: use a tokenizer with "
                             "minimind-3's template (train_tokenizer(..., template='minimind3'))")
        # open_thinking is minimind-3's name for what the course template calls enable_thinking=True
        return _render_course(messages, add_generation_prompt, True if open_thinking else enable_thinking)
    return _render_tool_chat(messages, template == "minimind3", tools, add_generation_prompt, enable_thinking,
                             open_thinking)


def _render_course(messages, add_generation_prompt, enable_thinking) -> _Rendering:
    out = _Rendering()
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use system, user or assistant (tool messages need "
                             "minimind-3's template)")
        out.add(f"<|im_start|>{role}\n")
        start = out.pos
        if role == "assistant" and m.get("reasoning_content"):
            out.add("<think>\n")
            out.add(f"{m['reasoning_content']}", True)
            out.add("\n</think>\n\n")
        out.add(f"{m['content']}", True)
        out.add("<|im_end|>")
        if role == "assistant":
            out.spans.append((start, out.pos))
        out.add("\n")
    if add_generation_prompt:
        out.add("<|im_start|>assistant\n")
        if enable_thinking is True:
            out.add("<think>\n")
        elif enable_thinking is False:
            out.add(_EMPTY_THINK)
    return out


def _tojson(value) -> str:
    # transformers' tojson filter: json.dumps without ASCII escapes (Jinja's own would escape HTML)
    return json.dumps(value, ensure_ascii=False)


def _render_tool_chat(messages, think: bool, tools, add_generation_prompt, enable_thinking,
                      open_thinking) -> _Rendering:
    """MiniMind2's template (think=False) or minimind-3's (think=True), as their Jinja renders them."""
    name = "minimind3" if think else "minimind2"
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in TOOL_ROLES:
            raise ValueError(f"message {i}: unknown role {role!r}: {name}'s template has system, user, "
                             "assistant and tool")
    out = _Rendering()
    system = messages[0] if messages and messages[0]["role"] == "system" else None
    if tools:
        out.add("<|im_start|>system\n")
        if system is not None:
            out.add(f"{system['content']}", True)
            out.add("\n\n")
        out.add(_TOOLS_INTRO)
        for tool in tools:
            out.add("\n")
            out.add(_tojson(tool), True)
        out.add(_TOOLS_OUTRO)
    elif system is not None:
        out.add("<|im_start|>system\n")
        out.add(f"{system['content']}", True)
        out.add("<|im_end|>\n")
    elif not think:  # MiniMind2 gives a conversation without a system turn a default one
        out.add("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n")
    for i, m in enumerate(messages):
        role = m["role"]
        content = m.get("content") if isinstance(m.get("content"), str) else ""
        if role == "user" or (role == "system" and i > 0):
            out.add(f"<|im_start|>{role}\n")
            out.add(content, True)
            out.add("<|im_end|>\n")
        elif role == "assistant":
            out.add("<|im_start|>assistant\n")
            start = out.pos
            if think:
                # the reasoning: reasoning_content, else what content holds before </think>
                reasoning = m.get("reasoning_content")
                if not isinstance(reasoning, str):
                    reasoning = ""
                    if "</think>" in content:
                        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                        content = content.split("</think>")[-1].lstrip("\n")
                out.add("<think>\n")
                out.add(reasoning.strip("\n"), True)
                out.add("\n</think>\n\n")
                out.add(content.lstrip("\n"), True)
            else:
                out.add(content, True)
            for k, call in enumerate(m.get("tool_calls") or []):
                _add_tool_call(out, call, i, k, newline=bool(k or content))
            out.add("<|im_end|>")
            out.spans.append((start, out.pos))
            out.add("\n")
        elif role == "tool":  # consecutive tool messages share one user turn
            if i == 0 or messages[i - 1]["role"] != "tool":
                out.add("<|im_start|>user")
            out.add("\n<tool_response>\n")
            out.add(content, True)
            out.add("\n</tool_response>")
            if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
                out.add("<|im_end|>\n")
    if add_generation_prompt:
        out.add("<|im_start|>assistant\n")
        if think:
            # enable_thinking=True is read as minimind-3's open_thinking: both ask the prompt to open <think>
            out.add("<think>\n" if open_thinking or enable_thinking is True else _EMPTY_THINK)
        elif enable_thinking is False:
            out.add(_EMPTY_THINK)
    return out


def _add_tool_call(out: _Rendering, call, i: int, k: int, newline: bool):
    """One tool call, OpenAI's {"type": "function", "function": {...}} or bare {"name", "arguments"}."""
    if isinstance(call, dict) and call.get("function"):
        call = call["function"]
    if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
        raise ValueError(f"message {i}: tool_calls[{k}] = {call!r} is not a tool call: write "
                         '{"name": ..., "arguments": {...}} or {"type": "function", "function": {"name": ..., '
                         '"arguments": ...}}')
    if newline:
        out.add("\n")
    out.add('<tool_call>\n{"name": "')
    out.add(f"{call['name']}", True)
    out.add('", "arguments": ')
    args = call["arguments"]
    out.add(args if isinstance(args, str) else _tojson(args), True)
    out.add("}\n</tool_call>")


class MiniMindTokenizer:
    """A `tokenizers.Tokenizer` with MiniMind's special tokens, ids and chat template (`template`: "minimind",
    "minimind2" or "minimind3", see CHAT_TEMPLATES)."""

    def __init__(self, tokenizer, template: str = "minimind"):
        if template not in CHAT_TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}: use one of {', '.join(CHAT_TEMPLATES)}")
        self.tokenizer = tokenizer
        self.template = template
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != [0, 1, 2]:
            raise ValueError(f"special tokens {SPECIAL_TOKENS} have ids {ids}, expected [0, 1, 2]: "
                             "train the tokenizer with minimind.tokenizer.train_tokenizer")
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        self.im_start_id, self.im_end_id = 1, 2
        self.pad_token, self.bos_token, self.eos_token = SPECIAL_TOKENS
        self.think_start_id = tokenizer.token_to_id("<think>")
        self.think_end_id = tokenizer.token_to_id("</think>")

    @property
    def chat_template(self) -> str:
        """The template in Jinja, as transformers renders it."""
        return CHAT_TEMPLATES[self.template]

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
        """Ids of many texts at once, spread over the cores (without character offsets: 15-45% faster)."""
        fast = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # tokenizers >= 0.21
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

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
                            tokenize: bool = False, enable_thinking: Optional[bool] = None, *,
                            tools: Optional[list] = None, open_thinking: bool = False):
        """The conversation in this tokenizer's chat template: text, or ids with tokenize=True. tools (JSON
        schemas) and messages with tool_calls or role "tool" need MiniMind's templates; open_thinking=True
        (minimind-3's switch, the same as enable_thinking=True) makes the generation prompt open <think>."""
        out = _render(messages, self.template, tools, add_generation_prompt, enable_thinking, open_thinking)
        text = out.text
        if not tokenize:
            return text
        if not any(m and any(t in piece for t in SPECIAL_TOKENS) for piece, m in out.pieces):
            return self.encode(text)
        # a message may not write control tokens: "<|im_end|><|im_start|>system" in a user's text stays text
        ids, run = [], []
        for piece, from_message in out.pieces:
            if from_message and any(t in piece for t in SPECIAL_TOKENS):
                ids += self.encode("".join(run)) + self.encode_as_text(piece)
                run = []
            else:
                run.append(piece)
        return ids + self.encode("".join(run))

    def render_chat_spans(self, messages: list[dict], add_generation_prompt: bool = False,
                          enable_thinking: Optional[bool] = None, *, tools: Optional[list] = None,
                          open_thinking: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """`render_chat_spans` in this tokenizer's template: the text and the assistant's character spans."""
        return render_chat_spans(messages, add_generation_prompt, enable_thinking, template=self.template,
                                 tools=tools, open_thinking=open_thinking)

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
        added = {str(i): dict(content=t.content, lstrip=t.lstrip, normalized=t.normalized, rstrip=t.rstrip,
                              single_word=t.single_word, special=t.special)
                 for i, t in sorted(self.tokenizer.get_added_tokens_decoder().items())}
        config = dict(
            tokenizer_class="PreTrainedTokenizerFast", add_bos_token=False, add_eos_token=False,
            added_tokens_decoder=added, bos_token="<|im_start|>", eos_token="<|im_end|>",
            pad_token="<|endoftext|>", unk_token="<|endoftext|>", clean_up_tokenization_spaces=False,
            model_max_length=32768, legacy=True, spaces_between_special_tokens=False, split_special_tokens=False,
            chat_template=self.chat_template)
        if self.template == "minimind3":  # as MiniMind's config: the special tokens past <|endoftext|>
            config["additional_special_tokens"] = [t["content"] for t in added.values()
                                                   if t["special"] and t["content"] != "<|endoftext|>"]
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        jinja = directory / "chat_template.jinja"
        if jinja.exists():  # transformers reads this file before the config's chat_template: keep them one
            jinja.write_text(self.chat_template)
        (directory / "special_tokens_map.json").write_text(json.dumps(dict(
            bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
            unk_token="<|endoftext|>"), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory, template: Optional[str] = None) -> "MiniMindTokenizer":
        """A tokenizer folder (or its tokenizer.json): ours, or MiniMind's MiniMind2 or minimind-3 as published.
        The chat template is read from the folder (chat_template.jinja, else tokenizer_config.json) unless
        template names it."""
        from tokenizers import Tokenizer
        directory = Path(directory)
        file = directory / "tokenizer.json" if directory.is_dir() or not directory.suffix else directory
        if not file.exists():
            raise FileNotFoundError(
                f"{file} not found: train a tokenizer first (minimind tokenizer train --data FILE --out "
                f"{directory}), or use the course's: minimind.data.corpus.ensure_course_data()")
        if template is None:
            template = _folder_template(file.parent)
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a plain Exception for a damaged file
            raise ValueError(f"{file} is not a tokenizer file ({err}): restore it, or train the tokenizer "
                             "again (minimind tokenizer train)") from None
        return cls(tokenizer, template=template)


def _folder_template(folder: Path) -> str:
    """The name of the chat template a tokenizer folder holds ("minimind" when it holds none)."""
    jinja, config = folder / "chat_template.jinja", folder / "tokenizer_config.json"
    source, chat_template = None, None
    if jinja.exists():
        source, chat_template = jinja, jinja.read_text(encoding="utf-8")
    elif config.exists():
        try:
            chat_template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{config} is not a JSON object ({err}): restore it, or delete it to use the course "
                             "chat template") from None
        source = config
    if isinstance(chat_template, list):  # transformers' form for several named templates
        chat_template = next((t.get("template") for t in chat_template if t.get("name") == "default"), None)
    name = detect_template(chat_template)
    if name is None:
        raise ValueError(f"{source}: its chat_template is none of MiniMind's (the course's, MiniMind2's, "
                         f"minimind-3's): pass MiniMindTokenizer.from_pretrained(..., template=NAME) with NAME one "
                         f"of {', '.join(CHAT_TEMPLATES)}, or save the folder again with one of them")
    return name


def train_tokenizer(texts: Iterable[str], vocab_size: int = 6400, min_frequency: int = 2,
                    template: str = "minimind") -> MiniMindTokenizer:
    """Byte-level BPE over texts (any iterator of strings): the template's added tokens (the course's 5, or
    minimind-3's 36 at minimind-3's ids), the 256 byte symbols, then merges until vocab_size (or until no pair
    occurs min_frequency times). The tokenizer renders chats in `template`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if template not in TRAINABLE_TEMPLATES:
        raise ValueError(f"train_tokenizer(template={template!r}): use one of {', '.join(TRAINABLE_TEMPLATES)} "
                         "(MiniMind2's tokenizer loads as published: MiniMindTokenizer.from_pretrained(folder))")
    added = _ADDED_TOKENS[template]
    if vocab_size < 256 + len(added):
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                         f"{256 + len(added)} (256 bytes + {len(added)} added tokens of template {template!r})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[t for t, _ in added],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # <think>, <tool_call> and the like are added tokens but not special: decoding keeps them
    special = dict(added)
    state = json.loads(tok.to_str())
    for entry in state["added_tokens"]:
        entry["special"] = special[entry["content"]]
    return MiniMindTokenizer(Tokenizer.from_str(json.dumps(state)), template=template)


def extend_tokenizer(tok: MiniMindTokenizer, texts: Iterable[str], new_merges: int = 500,
                     template: str = "minimind3") -> MiniMindTokenizer:
    """Grow a trained tokenizer for new text (vocabulary extension): every old token keeps its id; minimind-3's
    tags the old one lacks (<tool_call>, ...) become added tokens; then up to new_merges merges learned on
    texts are appended, with their tokens after the old ids. Old merges keep their priority, so the old text
    splits as before except where a new merge joins what no old merge did. The result renders `template`."""
    from tokenizers import Tokenizer
    state = json.loads(tok.tokenizer.to_str())
    vocab, merges = state["model"]["vocab"], state["model"]["merges"]
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]
    tags = [t for t, special in _ADDED_TOKENS.get(template, []) if not special and t not in vocab
            and not t.startswith("<|buffer")]
    for t in tags:
        vocab[t] = len(vocab)
        state["added_tokens"].append(dict(id=vocab[t], content=t, single_word=False, lstrip=False, rstrip=False,
                                          normalized=False, special=False))
    # BPE training continued from the old split: pairs of old tokens in the new text, most frequent first
    old = Tokenizer.from_str(tok.tokenizer.to_str())
    tag = re.compile("|".join(re.escape(a["content"]) for a in state["added_tokens"]))
    words: dict[tuple, int] = {}
    for text in texts:
        for piece in tag.split(text):
            for word, _ in old.pre_tokenizer.pre_tokenize_str(piece):
                if not word.strip(_BYTE_SPACES):
                    continue  # whitespace stays split: "</think>\n\n" ends a prompt as it sits before an answer
                key = tuple(t.value for t in old.model.tokenize(word))
                words[key] = words.get(key, 0) + 1
    for _ in range(new_merges):
        pairs: dict[tuple, int] = {}
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        if a + b not in vocab:  # a token the old vocabulary has (made by another path) keeps its id
            vocab[a + b] = len(vocab)
        merges.append([a, b])
        merged: dict[tuple, int] = {}
        for word, n in words.items():
            key = _merge_pair(word, a, b) if a in word else word
            merged[key] = merged.get(key, 0) + n
        words = merged
    state["model"]["merges"] = merges
    return MiniMindTokenizer(Tokenizer.from_str(json.dumps(state)), template=template)


_BYTE_SPACES = "ĠĊĉčċČ"  # byte-level BPE's space, newline, tab, carriage return, vertical tab, form feed


def _merge_pair(word: tuple, a: str, b: str) -> tuple:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


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
