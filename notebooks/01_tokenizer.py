# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The tokenizer
#
# A language model reads and writes integers, not letters. The **tokenizer** turns text into those
# integers and back. MiniMind uses **byte-level BPE** (byte-pair encoding): start from the 256 possible
# bytes, so that *any* text can be written, then repeatedly merge the most frequent adjacent pair into a
# new token, until the vocabulary has the size we asked for. MiniMind2's vocabulary is small, 6,400
# tokens, so that the embedding table stays a modest part of a 26M-parameter model.
#
# In this chapter we train a tokenizer on the course corpus, look at what it learned, measure how much
# text a token carries, and meet the special tokens and the chat template that the later chapters rely on.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's pretrain_hq, downloaded)
device = "auto"        # the tokenizer runs on the CPU whatever this says
out_dir = None         # where this run writes; None means runs/<preset>
vocab_size = 6400      # MiniMind2's vocabulary size
max_texts = 200_000    # with data="minimind": train on the first texts of pretrain_hq only

# %% [markdown]
# ## The text it learns from
# The course corpus is generated (chapter 02 shows it in full): a small world of people, places and
# animals, described in many phrasings, plus stories, sums and dialogues. The first call writes it to
# `data/course/` in a second or two; later calls find it there.

# %%
import itertools
import time

import matplotlib.pyplot as plt
from IPython.display import HTML, display

from minimind.course import record, runs_dir
from minimind.data import iter_texts
from minimind.data.corpus import course_tokenizer_texts, ensure_course_data
from minimind.data.files import find_root
from minimind.data.tokenizer import bytes_per_token, tokens_html, train_tokenizer

run_dir = runs_dir(preset, out_dir)
start = time.perf_counter()
paths = ensure_course_data(find_root() / "data" / "course", tokenizer=False)
corpus_seconds = time.perf_counter() - start
print(f"course corpus ready in {corpus_seconds:.1f} s")

# %%
if data == "minimind":  # MiniMind's real pretraining text (about 1.6 GB): downloaded once, then cached
    from minimind.data.download import download_dataset
    source = [download_dataset("pretrain_hq", find_root() / "data" / "minimind")]
else:
    source = course_tokenizer_texts(paths)
train_texts = list(itertools.islice(iter_texts(source), max_texts))
held_out = list(iter_texts(paths["pretrain_val"]))
print(f"{len(train_texts):,} training texts, {sum(len(t.encode()) for t in train_texts) / 1e6:.1f} MB; "
      f"{len(held_out):,} held-out texts")
print(train_texts[0][:300])

# %% [markdown]
# ## Training byte-level BPE
# `train_tokenizer` wraps the `tokenizers` library: a BPE model, a byte-level pre-tokenizer (text is
# split into words and spaces, each written in bytes, so nothing is ever unknown), and a trainer that
# reserves MiniMind's special tokens first. It is fast, because the counting and merging run in Rust.

# %%
start = time.perf_counter()
tok = train_tokenizer(train_texts, vocab_size=vocab_size)
train_seconds = time.perf_counter() - start
print(f"trained in {train_seconds:.2f} s")

# %%
# NBVAL_CHECK_OUTPUT
print(f"vocabulary: {tok.vocab_size} tokens (asked for at most {vocab_size})")
merges = tok.merges()
print(f"{len(merges)} merges; the first ten learned:")
for a, b in merges[:10]:
    print(f"  {a!r:>8} + {b!r:<8} -> {a + b!r}")

# %% [markdown]
# The first merges are the most frequent pairs: pieces of common words, and a space glued to the letter
# after it (`Ġ` is how byte-level BPE writes a space, so `Ġt` is " t"). On the course corpus the
# vocabulary may stop short of the size asked for: the world has few distinct words (counted below), and
# once every word is a single token there is no pair left to merge (a pair must occur at least twice).
# On MiniMind's real data (`data="minimind"`) all 6,400 slots fill up.
#
# The last merges show the longest pieces it built:

# %%
words = {w for t in train_texts for w in t.split()}
print(f"{len(words):,} distinct space-separated words in the training text")
for a, b in merges[-8:]:
    print(f"  {a!r:>12} + {b!r:<10} -> {a + b!r}")

# %% [markdown]
# ## Special tokens
# Five ids are reserved before any merge. `<|endoftext|>` pads batches. `<|im_start|>` and `<|im_end|>`
# open and close every turn of a dialogue (and wrap every pretraining document), so the model learns
# where a text ends: generation stops when it writes `<|im_end|>`. `<think>` and `</think>` frame the
# reasoning of chapter 12; they are added tokens that stay in decoded text.

# %%
# NBVAL_CHECK_OUTPUT
for name in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]:
    print(f"{name:15s} id {tok.token_to_id(name)}")
print("pad, bos, eos ids:", tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)

# %% [markdown]
# ## How a sentence splits
# Each coloured box is one token. A world sentence splits into whole words; a sentence from outside the
# world falls apart into short pieces and single bytes, yet still round-trips exactly.

# %%
# NBVAL_CHECK_OUTPUT
world_sentence = held_out[0].split(". ")[0] + "."
for text in [world_sentence, "Tokenizers dislike unfamiliar vocabulary: 東京!"]:
    ids = tok.encode(text)
    print(f"{len(text.encode())} bytes -> {len(ids)} tokens, round trip {tok.decode(ids) == text}: {ids}")
    display(HTML(tokens_html(tok, ids)))

# %% [markdown]
# ## Playground
# Type a sentence and watch it split. (In the book, the widget shows its default sentence.)

# %%
import ipywidgets as widgets

box, shown = widgets.Text(value=world_sentence, description="text", layout={"width": "90%"}), widgets.Output()


def show(change=None):
    with shown:
        shown.clear_output(wait=True)
        ids = tok.encode(box.value)
        display(HTML(f"{len(ids)} tokens, {len(box.value.encode()) / max(len(ids), 1):.2f} bytes/token"
                     + tokens_html(tok, ids)))


box.observe(show, names="value")
show()
display(widgets.VBox([box, shown]))
display(HTML(tokens_html(tok, box.value)))  # the static picture, for the book

# %% [markdown]
# ## Bytes per token and the vocabulary size
# A bigger vocabulary packs more text into each token: sequences get shorter (cheaper attention, longer
# context for the same length) but the embedding table grows and rare tokens get fewer training
# examples. We measure **bytes per token** on held-out text the tokenizer never saw.

# %%
sizes = [300, 500, 1000, 2000, vocab_size]
bpt = {}
for n in sizes:
    t = tok if n == vocab_size else train_tokenizer(train_texts, vocab_size=n)
    bpt[n] = (t.vocab_size, bytes_per_token(t, held_out))
    print(f"asked {n:5d}: vocabulary {bpt[n][0]:5d}, {bpt[n][1]:.2f} bytes per token")
held_out_bpt = bpt[vocab_size][1]

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([v for v, _ in bpt.values()], [b for _, b in bpt.values()], "o-")
ax.axhline(1.0, color="grey", ls=":", label="raw bytes (vocabulary 256)")
ax.set(xscale="log", xlabel="vocabulary size (log scale)", ylabel="bytes per token (held out)",
       title="Bigger vocabularies carry more text per token")
ax.legend()
plt.show()

# %% [markdown]
# Gains flatten once the common words have their own tokens. For the tiny model, vocabulary size is
# also a parameter budget: with hidden size 192, each vocabulary entry costs 192 weights.

# %% [markdown]
# ## Lossless, on every line
# Byte-level BPE never loses anything: decoding the ids gives back the exact text. We check every line
# of the held-out text and of the SFT dialogues.

# %%
# NBVAL_CHECK_OUTPUT
check = held_out + list(iter_texts(paths["sft"]))
decoded = tok.decode_batch(tok.encode_batch(check))
print(f"{len(check)} texts, all round-trip exactly: {decoded == check}")

# %% [markdown]
# ## The chat template
# Dialogues are flattened into one token sequence with **ChatML**: each message becomes
# `<|im_start|>role\ncontent<|im_end|>\n`; to ask the model for an answer, the prompt ends with
# `<|im_start|>assistant\n` (the *generation prompt*). The same template is written twice: in Python
# (`MiniMindTokenizer.apply_chat_template`) and in Jinja inside `tokenizer_config.json`, so that
# `transformers.AutoTokenizer` renders it too. Saving and reloading shows they agree.

# %%
from transformers import AutoTokenizer

from minimind.data import read_jsonl

tok_dir = run_dir / "tokenizer"
tok.save_pretrained(tok_dir)
hf = AutoTokenizer.from_pretrained(tok_dir)
dialogue = read_jsonl(paths["sft"], "sft")[2]["conversations"]
ours = tok.apply_chat_template(dialogue[:-1], add_generation_prompt=True)
print(ours)

# %%
# NBVAL_CHECK_OUTPUT
theirs = hf.apply_chat_template(dialogue[:-1], add_generation_prompt=True, tokenize=False)
print("same text:", ours == theirs)
print("same ids:", tok.encode(ours) == list(hf.encode(theirs, add_special_tokens=False)))
print("files:", sorted(p.name for p in tok_dir.iterdir()))

# %% [markdown]
# For reasoning, `enable_thinking=True` opens a `<think>` block after the generation prompt, and
# `enable_thinking=False` writes an empty one, asking for a direct answer:

# %%
print(repr(tok.apply_chat_template(dialogue[:1], add_generation_prompt=True, enable_thinking=False)))

# %% [markdown]
# ## Summary
# The course tokenizer trains in seconds (timed above); chapter 02 uses it (the same one, cached in
# `data/course/tokenizer`) to turn the corpus into training batches.

# %%
record(run_dir, "01_tokenizer", data=data, vocab_size=tok.vocab_size, train_texts=len(train_texts),
       train_seconds=round(train_seconds, 2), corpus_seconds=round(corpus_seconds, 2),
       held_out_bytes_per_token=round(held_out_bpt, 3))

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. One merge (implement).** BPE training repeats one step: replace every occurrence of the chosen pair
# of ids by a new id. Write `merge(ids, pair, new_id)`, left to right and without overlaps: a token used by
# one merge cannot start the next, so `merge([1, 1, 1], (1, 1), 9)` is `[9, 1]`.

# %%
def merge(ids, pair, new_id):
    ...  # your code: a new list


check("01.merge", merge)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)  # the pair becomes one token
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


assert check("01.merge", merge)

# %% [markdown]
# **2. Which pair (implement).** The step merges the most frequent adjacent pair. Write
# `most_frequent_pair(ids)`: among equal counts the pair that occurs first; `None` for fewer than two ids.
# With `merge`, that is a whole BPE trainer: find the pair, merge it, give it the next id, repeat
# (`train_tokenizer` does the same in Rust, over pre-split words, much faster).

# %%
def most_frequent_pair(ids):
    ...  # your code: a tuple (a, b), or None


check("01.most_frequent_pair", most_frequent_pair)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
from collections import Counter


def most_frequent_pair(ids):
    counts = Counter(zip(ids, ids[1:]))  # a Counter keeps first-seen order, so max() breaks ties by it
    return max(counts, key=counts.get) if counts else None


assert check("01.most_frequent_pair", most_frequent_pair)

# %% [markdown]
# **3. What the template costs (predict, then count).** A one-word user message, rendered with the chat
# template and the generation prompt: how many tokens does the template add around the word? Write your
# guess down, then count it with the course tokenizer (`tok` above, for `data="course"`).

# %%
template_tokens = None  # your count
check("01.template_overhead", template_tokens)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
from minimind.course import data_paths
from minimind.data.tokenizer import MiniMindTokenizer

course_tok = MiniMindTokenizer.from_pretrained(data_paths("course")["tokenizer"])
text = course_tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
template_tokens = len(course_tok.encode(text)) - len(course_tok.encode("hello"))
print(repr(text), "->", template_tokens, "tokens around the word")
assert check("01.template_overhead", template_tokens)
