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
# # 02 · Data
#
# Every training stage of this course reads JSONL, one JSON object a line, in MiniMind's formats:
#
# | stage | a line |
# | --- | --- |
# | pretraining | `{"text": "..."}` |
# | SFT, LoRA, reasoning | `{"conversations": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}` |
# | DPO | `{"chosen": [messages], "rejected": [messages]}` |
# | RL | `{"conversations": [...], "answer": "..."}` (a checkable answer) |
#
# MiniMind2 trains on about 1.6 GB of Chinese text and dialogues; a CPU cannot get through that. So the
# course **generates** its own corpus: a small world of people, places and animals, with facts stated
# in many phrasings, short stories and sums, small enough for the `tiny` model to learn in minutes. The
# generator is seeded: the same seed writes the same bytes. This chapter tours it and builds the
# batches each stage trains on.

# %% tags=["parameters"]
preset = "tiny"        # tiny | minimind2-small | minimind2 | minimind2-moe
data = "course"        # course (generated, offline) | minimind (MiniMind's published datasets)
device = "auto"        # data preparation runs on the CPU whatever this says
out_dir = None         # where this run writes; None means runs/<preset>
seed = 0               # the world's seed
seq_len = 256          # tokens per pretraining window

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, display

from minimind.course import record, runs_dir
from minimind.data import (DPODataset, PretrainDataset, RLPromptDataset, SFTDataset, check_file, pad_collate,
                           read_jsonl, tokenize_pretrain)
from minimind.data.corpus import ensure_course_data, write_course_corpus
from minimind.data.files import find_root
from minimind.data.tokenizer import MiniMindTokenizer, tokens_html

run_dir = runs_dir(preset, out_dir)

# %% [markdown]
# ## Generating the corpus
# `write_course_corpus` (the command line: `minimind data course --out DIR`) builds the world from the
# seed and writes every file. We time a fresh generation into the run folder, and check that it is
# byte for byte the copy that `ensure_course_data` keeps in `data/course/` for all chapters. The `tool_*`
# files and `registry.json` are for tool use: conversations in which the assistant calls a tool (MiniMind's
# format: the system turn lists the tools, the assistant turn holds `tool_calls`, a `tool` turn the result),
# and the town register those calls read, facts about the world's people that no other file mentions.

# %%
start = time.perf_counter()
fresh = write_course_corpus(run_dir / "corpus", seed=seed)
generation_seconds = time.perf_counter() - start
paths = ensure_course_data(find_root() / "data" / "course", seed=seed)
tok = MiniMindTokenizer.from_pretrained(paths["tokenizer"])
print(f"generated in {generation_seconds:.2f} s")

# %%
# NBVAL_CHECK_OUTPUT
same = all(fresh[k].read_bytes() == paths[k].read_bytes() for k in fresh if k != "manifest")
print("same seed, same bytes:", same)
print("files:", ", ".join(p.name for k, p in fresh.items() if k != "manifest"))

# %% [markdown]
# ## The world
# People with a home, a job, a pet, a best friend, a favourite colour and food, an age and a thing they
# own; places with a river, a hill, a trade and a size. Names are made of random syllables, so the model
# cannot know them from anywhere but this corpus.

# %%
# NBVAL_CHECK_OUTPUT
world = json.loads(paths["world"].read_text())
cols = ["name", "place", "job", "animal", "pet", "friend", "color", "food", "age"]
print(" ".join(f"{c:9s}" for c in cols))
for person in world["people"][:6]:
    print(" ".join(f"{person[c]:9s}" for c in cols))
print(f"... {len(world['people'])} people in {len(world['places'])} places")
for place in world["places"][:3]:
    print(place)

# %% [markdown]
# ## Facts, and a split that teaches something
# Each fact is stated in the pretraining text, in several phrasings and many times. About a quarter of
# the facts of each kind are **held out**: they never appear in a question of the SFT, DPO or RL data,
# only in `eval.jsonl`. After pretraining the model *knows* them as text; SFT teaches the question and
# answer format on the other facts. If the chat model then answers held-out questions, it uses knowledge
# it picked up in pretraining. Chapter 08 measures exactly that.

# %%
# NBVAL_CHECK_OUTPUT
facts = world["facts"]
for split in ("sft", "heldout"):
    print(f"{split:8s} {sum(f['split'] == split for f in facts):4d} facts")
held = next(f for f in facts if f["split"] == "heldout" and f["relation"] == "home")
docs = [r["text"] for r in read_jsonl(paths["pretrain"], "pretrain")]
sft_text = paths["sft"].read_text()
print(f"held out: {held['subject']} lives in {held['value']}")
print(f"  pretraining documents mentioning both: {sum(held['subject'] in d and held['value'] in d for d in docs)}")
print(f"  SFT lines asking where {held['subject']} lives: {sft_text.count(held['subject'] + ' live')}")

# %% [markdown]
# ## One line of every file
# The course files, then MiniMind's own formats as its published files have them (small copies in
# `data/fixtures/`, which the tests use too).

# %%
# NBVAL_CHECK_OUTPUT
for name in ["pretrain", "sft", "lora", "reason", "dpo", "rl", "eval"]:
    line = paths[name].open().readline().strip()
    print(f"{name + '.jsonl':14s} {line[:300]}{' ...' if len(line) > 300 else ''}")

# %%
from minimind.data.download import DATASETS

kinds = {file: kind for file, kind, _ in DATASETS.values()}
for file in sorted((find_root() / "data" / "fixtures").glob("*.jsonl")):
    summary = check_file(file, kinds[file.name])
    print(f"{file.name:20s} {summary['kind']:8s} {file.open().readline().strip()[:140]}")

# %% [markdown]
# ## How big is each file
# Lines and tokens (with the course tokenizer of chapter 01). The pretraining text is sized for the
# `tiny` preset's CPU budget: a few minutes of training reads most of it once.

# %%
# NBVAL_CHECK_OUTPUT
from minimind.data import iter_texts

sizes = {}
for name in ["pretrain", "pretrain_val", "sft", "sft_val", "lora", "reason", "dpo", "dpo_val", "rl", "rl_val", "eval"]:
    texts = list(iter_texts(paths[name]))
    sizes[name] = (sum(1 for _ in paths[name].open()), sum(map(len, tok.encode_batch(texts))))
    print(f"{name:13s} {sizes[name][0]:7,d} lines {sizes[name][1]:9,d} tokens")

# %% [markdown]
# ## Pretraining: tokenize once, then pack
# Documents have all sorts of lengths. Padding each one to a fixed length would waste compute on pad
# tokens; instead, `tokenize_pretrain` writes every document, wrapped in `<|im_start|> ... <|im_end|>`,
# back to back into one flat file of uint16 ids (as nanoGPT does), and `PretrainDataset` cuts that
# stream into windows of `seq_len` tokens. A window may hold the end of one document and the start of
# the next; the `<|im_end|>` between them tells the model where one text stops.

# %%
bin_path = run_dir / "data" / "pretrain.bin"
tokens = tokenize_pretrain(paths["pretrain"], tok, bin_path)
windows = PretrainDataset(bin_path, seq_len)
doc_lengths = np.diff(np.flatnonzero(np.asarray(tokens) == tok.bos_token_id), append=len(tokens))

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(tokens):,} tokens in {len(doc_lengths):,} documents, {bin_path.stat().st_size:,} bytes on disk")
print(f"{len(windows):,} windows of {seq_len}; tokens left over at the end: {len(tokens) - len(windows) * seq_len}")
print(f"padding fraction, packed: {windows.padding_fraction:.3f}")
width = min(seq_len, int(doc_lengths.max()))
padded = np.minimum(doc_lengths, width)
print(f"padding fraction if each document were padded to {width}: {1 - padded.sum() / (len(padded) * width):.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
axes[0].hist(doc_lengths, bins=40)
axes[0].set(xlabel="tokens per document", ylabel="documents", title="Document lengths")
stream = np.asarray(tokens[:4 * seq_len])
starts = np.flatnonzero(stream == tok.bos_token_id)
axes[1].imshow(np.searchsorted(starts, np.arange(len(stream)), side="right").reshape(4, seq_len) % 7,
               cmap="tab10", aspect="auto", interpolation="nearest")
axes[1].set(xlabel="position in window", ylabel="window", yticks=range(4),
            title="Packed windows: one colour per document")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## SFT: learn only what the assistant says
# A dialogue is rendered with the chat template, but the loss counts only the assistant's tokens: from
# just after `<|im_start|>assistant\n` through its `<|im_end|>` (so it learns to stop). Everything
# else gets the label -100, which cross-entropy ignores. Green below is trained, grey is masked.

# %%
sft = SFTDataset(paths["sft"], tok, max_len=seq_len)
index = next(i for i, r in enumerate(read_jsonl(paths["sft"], "sft")) if len(r["conversations"]) >= 5)
item = sft[index]
display(HTML(tokens_html(tok, item["input_ids"], item["labels"])))

# %%
# NBVAL_CHECK_OUTPUT
trained = item["labels"] != -100
print(f"dialogue {index}: {len(trained)} tokens, {int(trained.sum())} trained")
print("trained text:", repr(tok.decode(item["input_ids"][trained])))
print({k: v for k, v in sft.stats.items()})

# %% [markdown]
# The same mask as a picture: one cell a token; a black line where each message starts.

# %%
fig, ax = plt.subplots(figsize=(11, 1.4))
ax.imshow(trained[None].numpy(), cmap="Greens", aspect="auto", vmin=-0.3, vmax=1.2)
for k in np.flatnonzero(item["input_ids"].numpy() == tok.im_start_id):
    ax.axvline(k - 0.5, color="black", lw=1)
ax.set(yticks=[], xlabel="token position (black lines: <|im_start|>)", title="Loss mask: green tokens are learned")
plt.show()

# %% [markdown]
# ## DPO and RL batches
# DPO compares a chosen and a rejected answer to the same prompt, each with its own assistant mask.
# `pad_collate` pads ids with `<|endoftext|>` (id 0), labels with -100, and returns the attention masks.
# RL needs only prompts ending with the generation prompt, plus an answer a program can check.

# %%
# NBVAL_CHECK_OUTPUT
dpo = DPODataset(paths["dpo"], tok, max_len=seq_len)
batch = pad_collate([dpo[i] for i in range(4)], pad_id=tok.pad_token_id)
for key, value in batch.items():
    print(f"{key:24s} {tuple(value.shape)}")
print("rejected answer:", repr(tok.decode(batch["rejected_labels"][0][batch["rejected_labels"][0] != -100])))
rl = RLPromptDataset(paths["rl"], tok)
print(f"{len(rl)} RL prompts; first: {rl[0]['prompt']!r} -> answer {rl[0]['answer']!r}")

# %% [markdown]
# ## Bad input
# A broken line must not end in a traceback deep inside a training loop. Every loader validates each
# line and names the file, the line and the fix; `skip_bad=True` (the command line's `--skip-bad`)
# skips bad lines and counts them. `minimind data check FILE --kind sft` runs the same check.

# %%
# NBVAL_CHECK_OUTPUT
bad_file = run_dir / "data" / "broken.jsonl"
bad_file.write_text('{"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": '
                    '"Hello."}]}\n{"conversations": [{"role": "robot", "content": "beep"}]}\n')
try:
    read_jsonl(bad_file, "sft")
except ValueError as err:
    print(str(err).replace(str(run_dir), "RUN"))
print(check_file(bad_file, "sft", skip_bad=True)["bad_lines"])

# %% [markdown]
# ## Summary
# The corpus, its tokens, the packed pretraining windows and the masked SFT, DPO and RL batches are what
# chapters 07 to 12 train on; `minimind data download NAME` fetches MiniMind's real files in the same
# formats for a GPU run.

# %%
record(run_dir, "02_data", generation_seconds=round(generation_seconds, 2), pretrain_docs=sizes["pretrain"][0],
       pretrain_tokens=sizes["pretrain"][1], sft_dialogues=sizes["sft"][0], sft_tokens=sizes["sft"][1],
       dpo_pairs=sizes["dpo"][0], rl_prompts=sizes["rl"][0], eval_questions=sizes["eval"][0],
       packed_windows=len(windows), padding_fraction=windows.padding_fraction)

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. Pack (implement).** Pretraining reads one long stream of tokens cut into windows. Write
# `pack(docs, seq_len)`: the documents (lists of ids, each already ending in its end-of-text id) joined into
# one stream, cut into consecutive windows of `seq_len` ids; a last piece shorter than `seq_len` is left out.
# That is what `PretrainDataset` does over the token file, without copying it.

# %%
def pack(docs, seq_len):
    ...  # your code: a list of windows (lists of ids)


check("02.pack", pack)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def pack(docs, seq_len):
    stream = [t for doc in docs for t in doc]
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


assert check("02.pack", pack)

# %% [markdown]
# **2. How much does SFT learn from (predict, then measure).** Guess first: of all the tokens in the course
# SFT file, what share does the loss learn from (the assistant's)? More or less than half? Then measure it
# over every row of `SFTDataset(paths["sft"], tokenizer, max_len=512)`: labels that are not -100, over all
# labels.

# %%
learned_share = None  # your measurement, e.g. 0.5
check("02.learned_fraction", learned_share)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
from minimind.course import data_paths
from minimind.data.datasets import IGNORE_INDEX, SFTDataset
from minimind.data.tokenizer import MiniMindTokenizer

course = data_paths("course")
chats = SFTDataset(course["sft"], MiniMindTokenizer.from_pretrained(course["tokenizer"]), max_len=512)
learned = sum(int((chats[i]["labels"] != IGNORE_INDEX).sum()) for i in range(len(chats)))
learned_share = learned / sum(len(chats[i]["labels"]) for i in range(len(chats)))
print(f"{learned_share:.1%} of the SFT tokens are learned from")
assert check("02.learned_fraction", learned_share)

# %% [markdown]
# **3. Predictions per window (predict).** The model is scored at position $t$ on token $t + 1$. How many
# predictions does the loss make in one packed window of 256 tokens?

# %%
predictions = None  # your answer
check("02.predictions_per_window", predictions)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution: every position but the last, whose next token is in the next window
predictions = 256 - 1
assert check("02.predictions_per_window", predictions)
