"""Every stage's data as tokens: datasets, their token caches and batches (records.py reads and checks the files).

Pretraining: one flat uint16 token file, cut into packed windows tokens[i*T : (i+1)*T] (nanoGPT style).
Chat data (SFT, DPO): labels = ids on the assistant's tokens, -100 elsewhere. RL: prompts and their answers.
Conversations with tools (`tools`, `tool_calls`, `tool` messages) need a tokenizer with MiniMind's template.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .files import atomic_path, cache_dir, content_key
from .records import _FIXES, DataError, _absent, _json_list, _numbered_jsonl, iter_jsonl
from .token_table import build_table, token_dtype
from .tokenizer import IGNORE_INDEX, TOOL_TEMPLATES, render_chat_spans


def token_file_for(jsonl: Path, tokenizer, cache=None) -> Path:
    """Where the packed tokens of a pretraining file live: in the cache folder (`cache_dir()` unless given),
    keyed by the file's content and the tokenizer's vocabulary, so an edited file or a retrained tokenizer
    never reads stale tokens."""
    key = hashlib.sha1((content_key(jsonl) + tokenizer.tokenizer.to_str()).encode()).hexdigest()[:16]
    return Path(cache or cache_dir()) / "tokens" / f"{Path(jsonl).stem}.{key}.bin"


# -- pretraining: one flat token file, packed windows ------------------------------------------------------
def tokenize_pretrain(jsonl, tokenizer, out_bin, skip_bad: bool = False, batch_size: int = 1024,
                      limit: Optional[int] = None) -> np.memmap:
    """Tokenize every document once into out_bin (flat uint16, <|im_start|> text <|im_end|> back to back, written
    atomically) and out_bin + ".json" (tokens, documents, source). Returns the tokens as a memmap."""
    out_bin = Path(out_bin)
    if tokenizer.vocab_size > 65536:
        raise ValueError(f"vocab of {tokenizer.vocab_size} does not fit uint16 token files (at most 65536)")
    out_bin.parent.mkdir(parents=True, exist_ok=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    n_tokens = n_docs = 0
    bad: list = []

    def flush(fh, texts):
        nonlocal n_tokens, n_docs
        chunk = []
        for ids in tokenizer.encode_batch(texts):
            if not ids or ids[0] != bos:
                chunk.append(bos)
            chunk.extend(ids)
            if ids[-1:] != [eos]:
                chunk.append(eos)
        np.asarray(chunk, dtype=np.uint16).tofile(fh)
        n_tokens += len(chunk)
        n_docs += len(texts)

    with atomic_path(out_bin) as tmp, open(tmp, "wb") as fh:
        texts = []
        for rec in iter_jsonl(jsonl, "pretrain", skip_bad=skip_bad, bad=bad, limit=limit):
            texts.append(rec["text"])
            if len(texts) == batch_size:
                flush(fh, texts)
                texts = []
        if texts:
            flush(fh, texts)
        if n_docs == 0:
            raise DataError(f"{jsonl}: no pretraining documents to tokenize")
    meta = dict(tokens=n_tokens, documents=n_docs, bad_lines=len(bad), dtype="uint16", source=str(jsonl),
                vocab_size=tokenizer.vocab_size)
    Path(str(out_bin) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return np.memmap(out_bin, dtype=np.uint16, mode="r")


class PretrainDataset(torch.utils.data.Dataset):
    """Packed windows over a flat token file: item i is tokens[i*seq_len : (i+1)*seq_len] as input_ids and labels
    (the model shifts them). No gap, no padding; only the last len % seq_len tokens are left out."""

    def __init__(self, bin_path, seq_len: int):
        bin_path = Path(bin_path)
        if not bin_path.exists():
            raise FileNotFoundError(f"{bin_path} not found: make it with minimind.data.tokenize_pretrain")
        self.tokens = np.memmap(bin_path, dtype=np.uint16, mode="r")
        self.seq_len = int(seq_len)
        if len(self.tokens) < self.seq_len:
            raise ValueError(f"{bin_path} holds {len(self.tokens)} tokens, fewer than one window of "
                             f"seq_len={self.seq_len}: use a shorter seq_len or more text")

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        window = torch.from_numpy(self.tokens[i * self.seq_len:(i + 1) * self.seq_len].astype(np.int64))  # (T,)
        return dict(input_ids=window, labels=window.clone())  # (T,) each; collated to (B, T)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def padding_fraction(self) -> float:
        return 0.0  # packed: every position of every window is a real token


# -- chat data: labels on the assistant's tokens only --------------------------------------------------------
def chat_labels(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation: labels equal the ids on the tokens the assistant writes
    (from after `<|im_start|>assistant\\n` through `<|im_end|>`) and -100 everywhere else."""
    text, spans = render_record(messages, template_of(tokenizer))
    ids, offsets = tokenizer.encode_with_offsets(text)
    return ids, _mask(ids, offsets, spans)


def chat_tools(messages: list[dict]) -> tuple[list[dict], Optional[list]]:
    """(messages, tools) as the renderer takes them: `tool_calls` written as JSON strings parsed to lists, and
    the system message's `tools` (parsed when a JSON string), None when it has none. The input is not changed."""
    out, tools = [], None
    for m in messages:
        if isinstance(m, dict):
            if m.get("role") == "system" and not _absent(m.get("tools")):
                tools = _json_list(m["tools"])
            if isinstance(m.get("tool_calls"), str) and m["tool_calls"]:
                m = {**m, "tool_calls": _json_list(m["tool_calls"])}
        out.append(m)
    return out, tools


TOOLS_FIX = ("use a tokenizer with minimind-3's chat template: train one with `minimind tokenizer train --template "
             "minimind3` (in Python: train_tokenizer(..., template=\"minimind3\")), or load MiniMind's own "
             "(MiniMindTokenizer.from_pretrained)")


def _tool_use(messages: list[dict], tools) -> list[str]:
    """What in a conversation needs a template with tools (empty when nothing does)."""
    found = [("a tools list", bool(tools)),
             ("tool calls", any(isinstance(m, dict) and m.get("tool_calls") for m in messages)),
             ('tool results (role "tool")', any(isinstance(m, dict) and m.get("role") == "tool" for m in messages))]
    return [what for what, hit in found if hit]


def render_record(messages: list[dict], template: str, add_generation_prompt: bool = False):
    """(text, assistant spans) of a record's conversation with its tools and tool calls (see chat_tools).
    The course template cannot render tools: such a conversation raises DataError naming the fix."""
    messages, tools = chat_tools(messages)
    if template not in TOOL_TEMPLATES:
        found = _tool_use(messages, tools)
        if found:
            raise DataError(f"the chat template 'minimind' (the course's) cannot render tools, and this conversation "
                            f"has {', '.join(found)}; fix: {TOOLS_FIX}")
    return render_chat_spans(messages, add_generation_prompt, template=template, tools=tools)


class _RecordError(DataError):
    """A record of a chunk that cannot be rendered; `index`: its place in the chunk."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


def _render_all(conversations, template: str, add_generation_prompt: bool = False) -> list:
    """render_record of each conversation; a failure raises _RecordError with the conversation's index."""
    out = []
    for k, messages in enumerate(conversations):
        try:
            out.append(render_record(messages, template, add_generation_prompt))
        except ValueError as err:  # DataError, a bad tool call or role, a tool list that is not JSON
            raise _RecordError(k, str(err)) from None
    return out


def template_of(tokenizer) -> str:
    """The chat template the tokenizer's model was trained with (MiniMind's tokenizers bring their own)."""
    return getattr(tokenizer, "template", "minimind")


def span_mask(starts: np.ndarray, spans) -> np.ndarray:
    """True for the tokens (given by their first character, (n,)) that start inside one of the sorted,
    disjoint character spans [(start, end), ...]: an odd count of span bounds at or before a token's start."""
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1)  # (2 * spans,) s0 e0 s1 e1 ...
    return np.searchsorted(bounds, starts, side="right") % 2 == 1


def _mask(ids, offsets, spans) -> list[int]:
    inside = span_mask(np.fromiter((s for s, _ in offsets), np.int64, len(offsets)), spans)
    return [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, inside)]


# no token of a byte-level BPE is this many characters long: text past max_len * CHARS_PER_TOKEN characters
# cannot be within the first max_len tokens, and is cut before tokenizing (one 50 MB line stays cheap)
CHARS_PER_TOKEN = 64
CHUNK_RECORDS = 1024  # records tokenized per encode_batch call (the Rust tokenizer spreads a batch over cores)
PROGRESS_BYTES = 32 << 20  # files at least this big show a progress bar (MB, MB/s, ETA) while tokenized


def _encode_chats(tokenizer, conversations: list[list[dict]], max_len: int):
    """Tokenize conversations in one batch; truncate to max_len. -> [(ids (n,), learned (n,) bool, truncated)]."""
    rendered = _render_all(conversations, template_of(tokenizer))
    limit = max_len * CHARS_PER_TOKEN
    encs = tokenizer.tokenizer.encode_batch([t[:limit] for t, _ in rendered], add_special_tokens=False)
    out = []
    for (text, spans), enc in zip(rendered, encs):
        ids = np.asarray(enc.ids, dtype=np.int64)
        starts = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)[:, 0]  # each token's first character
        learned = span_mask(starts, spans)
        truncated = len(ids) > max_len or len(text) > limit
        out.append((ids[:max_len], learned[:max_len], truncated))
    return out


def table_folder(jsonl, tokenizer, kind: str, max_len: Optional[int], skip_bad: bool, cache=None) -> Path:
    """Where a chat file's token table lives: in the cache folder, keyed by the file's content, the tokenizer
    (vocabulary and chat template), max_len and skip_bad, so nothing stale is ever read."""
    key = hashlib.sha1(json.dumps([content_key(jsonl), tokenizer.tokenizer.to_str(), template_of(tokenizer),
                                   kind, max_len, skip_bad]).encode()).hexdigest()[:16]
    return Path(cache or cache_dir()) / "tables" / f"{Path(jsonl).stem}.{kind}.{key}"


def _table(source, tokenizer, kind: str, max_len, skip_bad: bool, columns: dict, encode, cache=None):
    """A TokenTable of `source` (a JSONL file: cached on disk; a list of records: in memory). encode(records)
    -> [(rows dict or None when dropped, truncated count)] for a chunk of records."""
    on_disk = not isinstance(source, list)
    folder = table_folder(source, tokenizer, kind, max_len, skip_bad, cache) if on_disk else None

    def fill(writer):
        counts = dict(records=0, truncated=0, dropped_no_target=0, bad_lines=0, tokens=0, target_tokens=0)
        bad: list = []
        bar = None
        if on_disk:
            from tqdm.auto import tqdm
            size = Path(source).stat().st_size
            bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, mininterval=1.0,
                       desc=f"tokenizing {Path(source).name}", disable=size < PROGRESS_BYTES)
            numbered = _numbered_jsonl(source, kind, skip_bad=skip_bad, bad=bad, on_bytes=bar.update)
        else:
            numbered = enumerate(source)
        try:
            while chunk := list(itertools.islice(numbered, CHUNK_RECORDS)):
                kept = {name: [] for name in columns}
                try:
                    encoded = encode([record for _, record in chunk])
                except _RecordError as err:  # name the record: file:line, or its index in the list
                    n = chunk[err.index][0]
                    raise DataError(f"{source}:{n}: {err}" if on_disk else f"{kind} records[{n}]: {err}") from None
                for rows, truncated in encoded:
                    counts["records"] += 1
                    counts["truncated"] += truncated
                    if rows is None:
                        counts["dropped_no_target"] += 1
                        continue
                    for name, row in rows.items():
                        kept[name].append(row)
                        if name.endswith("ids"):
                            counts["tokens"] += len(row)
                        elif name.endswith("learned"):
                            counts["target_tokens"] += int(row.sum())
                writer.add_many(**kept)
        finally:
            if bar is not None:
                bar.close()
        counts["bad_lines"] = len(bad)
        if counts["records"] == 0:
            where = source if on_disk else f"{kind} records"
            first = f", first at line {bad[0][0]}: {bad[0][1]}" if bad else " (the file is empty)"
            raise DataError(f"{where}: no records{first}; fix: {_FIXES[kind]}")
        if bad:
            counts["first_bad"] = list(bad[0])
        return counts

    table = build_table(folder, columns, fill)
    meta = table.meta
    if meta.get("bad_lines"):
        line, problem = meta["first_bad"]
        warnings.warn(f"{source}: skipped {meta['bad_lines']} bad line(s), first at line {line}: {problem}",
                      stacklevel=3)
    return table


def _chat_rows(tokenizer, conversations, max_len, prefix=""):
    return [({f"{prefix}input_ids": ids, f"{prefix}learned": learned} if learned.any() else None, truncated)
            for ids, learned, truncated in _encode_chats(tokenizer, conversations, max_len)]


def _warn_dropped(name: str, dropped: int, total: int, max_len: int):
    if dropped:
        warnings.warn(f"{name}: dropped {dropped} of {total} samples that keep no assistant token within "
                      f"max_len={max_len} (their answers start too late); raise max_len to keep them",
                      stacklevel=3)
    if total and dropped == total:
        raise DataError(f"{name}: no sample keeps an assistant token within max_len={max_len}; raise max_len")


def _labels(ids: np.ndarray, learned: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(ids.astype(np.int64))  # (T,)
    return ids, torch.where(torch.from_numpy(learned.astype(bool)), ids, IGNORE_INDEX)  # (T,)


class SFTDataset(torch.utils.data.Dataset):
    """Chat samples: item -> dict(input_ids, labels), labels -100 outside the assistant's turns. Truncated to
    max_len; a sample left with no trainable token is dropped with a warning (counted in `.stats`).

    A JSONL file is tokenized once into a token table in the cache (memory-mapped: memory does not grow with
    the file; the next run reuses it); a list of records stays in memory."""

    def __init__(self, jsonl, tokenizer, max_len: int = 512, skip_bad: bool = False, cache=None):
        columns = {"input_ids": token_dtype(tokenizer.vocab_size), "learned": np.bool_}
        self.table = _table(jsonl, tokenizer, "sft", max_len, skip_bad, columns,
                            lambda recs: _chat_rows(tokenizer, [r["conversations"] for r in recs], max_len), cache)
        m = self.table.meta
        self.stats = dict(records=m["records"], samples=len(self.table), truncated=m["truncated"],
                          dropped_no_target=m["dropped_no_target"], tokens=m["tokens"],
                          target_tokens=m["target_tokens"], bad_lines=m["bad_lines"])
        _warn_dropped(str(jsonl) if not isinstance(jsonl, list) else "SFTDataset", m["dropped_no_target"],
                      m["records"], max_len)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict:
        ids, labels = _labels(self.table.row("input_ids", i), self.table.row("learned", i))
        return dict(input_ids=ids, labels=labels)

    def lengths(self) -> np.ndarray:
        """Every sample's length in tokens (samples,), read from the table's index alone."""
        return self.table.lengths("input_ids")


class DPODataset(torch.utils.data.Dataset):
    """Preference pairs: item -> chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels
    (labels -100 outside the assistant's turns). Pairs where either side keeps no answer token are dropped.
    Files are tokenized once into a cached token table, as for SFTDataset."""

    def __init__(self, jsonl, tokenizer, max_len: int = 512, skip_bad: bool = False, cache=None):
        dt = token_dtype(tokenizer.vocab_size)
        columns = {"chosen_input_ids": dt, "chosen_learned": np.bool_,
                   "rejected_input_ids": dt, "rejected_learned": np.bool_}

        def encode(records):
            chosen = _chat_rows(tokenizer, [r["chosen"] for r in records], max_len, "chosen_")
            rejected = _chat_rows(tokenizer, [r["rejected"] for r in records], max_len, "rejected_")
            return [({**c, **r} if c is not None and r is not None else None, tc + tr)
                    for (c, tc), (r, tr) in zip(chosen, rejected)]

        self.table = _table(jsonl, tokenizer, "dpo", max_len, skip_bad, columns, encode, cache)
        m = self.table.meta
        self.stats = dict(records=m["records"], samples=len(self.table), truncated=m["truncated"],
                          dropped_no_target=m["dropped_no_target"], bad_lines=m["bad_lines"])
        _warn_dropped(str(jsonl) if not isinstance(jsonl, list) else "DPODataset", m["dropped_no_target"],
                      m["records"], max_len)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict:
        ci, cl = _labels(self.table.row("chosen_input_ids", i), self.table.row("chosen_learned", i))
        ri, rl = _labels(self.table.row("rejected_input_ids", i), self.table.row("rejected_learned", i))
        return dict(chosen_input_ids=ci, chosen_labels=cl, rejected_input_ids=ri, rejected_labels=rl)


class RLPromptDataset(torch.utils.data.Dataset):
    """RL prompts: item -> dict(prompt (text ending in the generation prompt), prompt_ids, answer ("" if none)).
    Trailing assistant turns (rlaif-mini's placeholder answers) are left out of the prompt. A long prompt keeps
    its last max_len tokens (the question and the generation prompt). Files go through a cached token table."""

    def __init__(self, jsonl, tokenizer, max_len: Optional[int] = None, skip_bad: bool = False, cache=None):
        columns = {"prompt_ids": token_dtype(tokenizer.vocab_size), "prompt": np.uint8, "answer": np.uint8}
        template = template_of(tokenizer)

        def encode(records):
            conversations = []
            for r in records:
                msgs = list(r["conversations"])
                while msgs and msgs[-1]["role"] == "assistant":
                    msgs.pop()
                conversations.append(msgs)
            prompts = [text for text, _ in _render_all(conversations, template, add_generation_prompt=True)]
            cut = max_len * CHARS_PER_TOKEN if max_len is not None else None
            ids = tokenizer.encode_batch([p[-cut:] if cut else p for p in prompts])
            return [(dict(prompt_ids=i[-max_len:] if max_len else i, prompt=_utf8(p),
                          answer=_utf8(r.get("answer", ""))), 0) for i, p, r in zip(ids, prompts, records)]

        self.table = _table(jsonl, tokenizer, "rl", max_len, skip_bad, columns, encode, cache)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict:
        t = self.table
        return dict(prompt=t.row("prompt", i).tobytes().decode("utf-8"),
                    prompt_ids=torch.from_numpy(t.row("prompt_ids", i).astype(np.int64)),
                    answer=t.row("answer", i).tobytes().decode("utf-8"))


def _utf8(text) -> np.ndarray:
    return np.frombuffer(str(text).encode("utf-8"), dtype=np.uint8)


def pad_sequences(seqs, value: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of different lengths -> (padded (N, T), mask (N, T)) with mask 1 on the real entries.
    side="left" puts the padding first (what generation from a batch of prompts wants)."""
    if side not in ("right", "left"):
        raise ValueError("padding side must be 'right' or 'left'")
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in seqs]  # N of (T_i,)
    width = max(len(s) for s in seqs)  # T = max T_i
    padded = torch.full((len(seqs), width), value, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (N, T)
    for row, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        padded[row, cols], mask[row, cols] = s, 1
    return padded, mask


def pad_collate(batch: list[dict], pad_id: int = 0, padding_side: str = "right") -> dict:
    """Stack items into a batch: "*_ids" keys padded with pad_id, each with a mask named after it ("attention_mask",
    "chosen_attention_mask", "prompt_attention_mask"); "*labels" padded with -100; non-tensors kept as lists."""
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if not torch.is_tensor(values[0]):
            out[key] = values
            continue
        is_ids, is_labels = key.endswith("_ids") or key == "input_ids", key.endswith("labels")
        if not (is_ids or is_labels) or values[0].dim() == 0:
            out[key] = torch.stack(values)
            continue
        out[key], mask = pad_sequences(values, IGNORE_INDEX if is_labels else pad_id, padding_side)  # (B, T) each
        if is_ids:
            name = ("attention_mask" if key == "input_ids" else
                    key[:-len("input_ids")] + "attention_mask" if key.endswith("input_ids") else
                    key[:-len("ids")] + "attention_mask")
            out[name] = mask
    return out
