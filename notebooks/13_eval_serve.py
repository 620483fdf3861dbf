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
# # 13 · Evaluate and serve
#
# Every chapter since 07 left a checkpoint in `runs/<preset>/`. This one puts them side by side with the
# same yardsticks, then does with the model what a user would: chat with it, serve it behind an
# OpenAI-compatible API and call that API with the official `openai` client, and export it to the two
# formats the rest of the ecosystem reads, transformers and GGUF (llama.cpp, Ollama, LM Studio).
#
# The measurements:
# - **perplexity** on held-out pretraining text (and **bits per byte**, which does not depend on the
#   tokenizer), the same text for every stage, so it also shows what later stages forget;
# - **multiple-choice accuracy** on the course's held-out questions, scored by likelihood: a probe of what
#   the model *knows*, whatever it would write;
# - **exact match**: the model answers short questions greedily and the answer is checked, a test of what
#   it *says*.

# %% tags=["parameters"]
preset = "tiny"
data = "course"        # course | minimind (no course questions there: perplexity only)
device = "auto"
dtype = "auto"         # auto: bf16 autocast on a GPU or a CPU with bf16 hardware, else float32
out_dir = None
ppl_docs = 64          # held-out documents scored for perplexity
max_new_tokens = 32    # per exact-match answer
trained_len = 256      # the window length chapter 07 pretrained on (SEQ_LEN["pretrain"])
seed = 0               # the course run's seed: which chapter 08 model is evaluated
n_requests = 5         # requests timed against the server
published = ""         # also measure a MiniMind checkpoint: a hub id (jingyaogong/minimind-3) or a folder

# %%
import contextlib
import socket
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from minimind.course import data_paths, ensure_stage, record, runs_dir
from minimind.course.plots import plot_checkpoints, plot_length_curve
from minimind.course.report import MarkdownView, report_table, write_report_card
from minimind.data.files import find_root
from minimind.model import load_checkpoint
from minimind.train.runtime import pick_device
from minimind.use.chat import ChatSession, chat_widget
from minimind.use.eval import (evaluate_checkpoints, find_checkpoints, load_multiple_choice, load_short_answers,
                               markdown_table, perplexity, read_documents, score_question, yarn_length_curve)
from minimind.use.serve import running_server

run_dir = runs_dir(preset, out_dir)
paths = data_paths(data)
dev = pick_device(device)
if dev.type == "cpu" and preset == "tiny":
    torch.set_num_threads(1)  # the tiny model's matrices are too small to share out: one thread is faster
sft_dir = ensure_stage("sft", run_dir, paths, preset, device, dtype=dtype, seed=seed)  # chapter 08's model (and 07's), or built now
checkpoints = find_checkpoints(run_dir)
print("checkpoints found:", ", ".join(f"{stage} ({folder.name}/)" for stage, folder in checkpoints.items()))

# %% [markdown]
# ## The question files
# Benchmarks come in a handful of layouts: C-Eval and CMMLU as CSV with a header, MMLU as CSV without
# one, ARC as JSON in two shapes (AI2's and Hugging Face's). `load_multiple_choice` reads each (it tells
# them apart by content) into the same `MCQuestion`. Miniature copies in `data/fixtures/eval` keep the
# loaders honest; the course's own `eval.jsonl` holds multiple-choice and short-answer questions about
# facts that only the pretraining text states (*held out*), facts the SFT dialogues also asked about
# (*seen*), and arithmetic.

# %%
# NBVAL_CHECK_OUTPUT
fixtures = find_root() / "data" / "fixtures" / "eval"
for name in ("ceval_val.csv", "cmmlu_test.csv", "mmlu_test.csv", "arc_challenge.jsonl", "arc_easy_hf.json"):
    qs = load_multiple_choice(fixtures / name)
    print(f"{name:20s} {len(qs)} questions, {len(qs[0].choices)} options, first answer {'ABCD'[qs[0].label]}")
if "eval" in paths:
    mc_questions, short = load_multiple_choice(paths["eval"]), load_short_answers(paths["eval"])
    splits = {s: sum(r["split"] == s for r in short) for s in sorted({r["split"] for r in short})}
    print(f"course eval.jsonl:   {len(mc_questions)} multiple-choice, {len(short)} short answers {splits}")

# %% [markdown]
# ## Scoring one multiple-choice question
# The model never picks a letter here. Each option's sentence is scored as a continuation of the
# question: the sum of the log-probabilities of its tokens. The most likely option is the model's
# answer. Short options and long ones are not on equal terms (every extra token costs probability), so
# `accuracy_norm` also compares the log-likelihood per byte.

# %%
base, tokenizer = load_checkpoint(checkpoints["pretrain"], device=dev)
if "eval" in paths:
    q = mc_questions[0]
    scored = score_question(base, tokenizer, q)
    print(q.question)
    for i, (text, ll) in enumerate(zip(q.choice_texts or q.choices, scored["loglik"])):
        mark = ("<- model" if i == scored["pred"] else "") + (" (right)" if i == q.label else "")
        print(f"  {ll:8.2f}  {text}  {mark}")

# %% [markdown]
# ## Every checkpoint, side by side
# `evaluate_checkpoints` loads each finished stage folder (a LoRA run is merged into the base it names)
# and measures it. The base model answers as plain text (it never saw the chat template); the chat models
# answer in the template. Multiple choice is scored as plain text for all, so that column compares
# knowledge alone.

# %%
t0 = time.perf_counter()
rows = evaluate_checkpoints(run_dir, paths, device=dev, ppl_docs=ppl_docs, max_new_tokens=max_new_tokens)
eval_seconds = time.perf_counter() - t0
columns = {"stage": "stage", "params_M": "M params", "perplexity": "perplexity", "bits_per_byte": "bits/byte",
           "mc_accuracy": "MC acc.", "exact_match": "EM"}
columns.update({k: "EM " + k[3:] for k in rows[0] if k.startswith("em_")})
display(MarkdownView(markdown_table(rows, columns)))
print(f"{len(rows)} checkpoints evaluated in {eval_seconds:.0f} s")

# %%
fig = plot_checkpoints(rows, title=f"every stage of the {preset} run")
plt.show()

# %% [markdown]
# Reading the table: pretraining put the facts in (multiple choice is far above chance already for the
# base model), and SFT made them *sayable*: exact match on the held-out facts, which no SFT dialogue
# mentions, comes from knowledge the base model had. The price is on plain text: after SFT the model
# expects dialogues in the chat template, so its perplexity on pretraining text rises, and the plain-text
# multiple-choice probe can slip with it. That is forgetting, measured; later stages trade the same way.

# %%
by_stage = {r["stage"]: r for r in rows}
for key in ("perplexity", "mc_accuracy", "em_heldout", "em_seen", "em_arith"):
    if by_stage["pretrain"].get(key) is not None:
        print(f"{key:12s} pretrain {by_stage['pretrain'][key]:.3f} -> sft {by_stage['sft'][key]:.3f}")

# %% [markdown]
# The same three held-out questions, answered by each checkpoint:

# %%
few = [a for a in rows[0]["answers"] if a["split"] == "heldout"][:3]
for a in few:
    print(f"Q: {a['question']}   (expected: {a['answer']})")
    for r in rows:
        reply = next(x for x in r["answers"] if x["id"] == a["id"])
        print(f"   {r['stage']:9s} {'ok ' if reply['correct'] else '   '} {reply['output'][:60]!r}")

# %% [markdown]
# ## The report card so far
# Each chapter `record`s what it measured in `runs/<preset>/report/`; `write_report_card` gathers those
# entries into `report.md`, a table a chapter (`make course` writes it at the end, with each chapter's
# wall time, and the book's *Report card* page shows it). Here is the card so far, a row a chapter:

# %%
card = write_report_card(run_dir, title=f"MiniMind report card: preset {preset}")
chapters_recorded = card.read_text().count("\n## ")
print(f"wrote {card.relative_to(run_dir.parent.parent)}: {chapters_recorded} chapters recorded")
display(MarkdownView(report_table(run_dir, exclude={"13_eval_serve"})))

# %% [markdown]
# ## Longer than trained: perplexity against length, RoPE and YaRN
# Chapter 04 showed what YaRN does to RoPE's frequencies. Here is what it does to a trained model. The
# base model was pretrained on windows of `trained_len` tokens; below, windows of held-out text of
# growing length are scored with plain RoPE and with YaRN (`factor` = longest length / trained length,
# `original_max_position_embeddings` = the trained length). No weight changes: only the rotation.
# The right panel scores only the last quarter of each window, where the positions are farthest.

# %%
lengths = [trained_len // 4, trained_len // 2, trained_len, trained_len * 2, trained_len * 4, trained_len * 8]
held_out = read_documents(paths.get("pretrain_val") or paths["pretrain"], limit=1000)
curve = yarn_length_curve(base, tokenizer, held_out, lengths,
                          original_max_position_embeddings=trained_len, max_windows=4)
plot_length_curve(curve, title="the base model read past its training length")
plt.show()
i_long = len(lengths) - 1
print(f"at {lengths[i_long]} tokens ({lengths[i_long] // trained_len}x the trained length): perplexity "
      f"{curve['rope'][i_long]:.2f} with RoPE, {curve['yarn'][i_long]:.2f} with YaRN; last quarter "
      f"{curve['rope_tail'][i_long]:.2f} vs {curve['yarn_tail'][i_long]:.2f}")
print(f"at the trained length: {curve['rope'][2]:.2f} with RoPE, {curve['yarn'][2]:.2f} with YaRN")

# %% [markdown]
# Past the trained length plain RoPE meets rotation angles it never saw and the perplexity climbs; YaRN
# keeps it nearly flat. The price shows at short lengths: YaRN's interpolated slow frequencies are not
# quite those the model learned, so it reads short texts a little worse. That is why MiniMind turns YaRN
# on only for inference on long inputs (`rope_scaling` in the config), not by default.

# %% [markdown]
# ## Chat
# `ChatSession` keeps the history, renders the chat template and streams the reply as whole characters
# (a byte-level token can end mid-character). The widget below wraps it; in a live notebook, type into
# it. What it shows here is one turn sent from code.

# %%
model, tokenizer = load_checkpoint(sft_dir, device=dev)
chat = ChatSession(model, tokenizer, temperature=0, max_new_tokens=48)
question = few[0]["question"] if few else "Hello, who are you?"
print("user:", question)
print("assistant:", chat.ask(question))
print("user: And what do you know about arithmetic? What is 3 plus 4?")
print("assistant:", chat.ask("And what do you know about arithmetic? What is 3 plus 4?"))
print(f"history: {len(chat.history)} messages; last reply {chat.last.completion_tokens} tokens, "
      f"finish reason {chat.last.finish_reason!r}")

# %%
widget = chat_widget(model, tokenizer, temperature=0.0, max_new_tokens=48)
widget.submit(question)
display(widget)
for turn in widget.session.history:  # what the transcript shows (the book does not run widgets)
    print(f"{turn['role']}: {turn['content']}")
print(f"({widget.session.last.completion_tokens} tokens, finish: {widget.session.last.finish_reason})")

# %% [markdown]
# ## Serving: an OpenAI-compatible API
# `minimind serve CKPT` runs the server from a terminal. In a notebook, `running_server` starts the same
# server in a background thread on a free port of 127.0.0.1 (port 0 asks the system for one) and stops
# it when the block ends. We enter it with an `ExitStack` so the server lives across the next few cells.
# Any OpenAI client works against it; here is the official one.

# %%
import openai

stack = contextlib.ExitStack()
server = stack.enter_context(running_server(model, tokenizer, model_name="minimind-sft"))
client = openai.OpenAI(base_url=server.api_base, api_key="none", max_retries=0, timeout=60)
print("serving on", server.url)

# %%
# NBVAL_CHECK_OUTPUT
import urllib.request, json  # noqa: E401
print("GET  /v1/models ->", [m.id for m in client.models.list().data])
health = json.load(urllib.request.urlopen(server.url + "/health"))
print("GET  /health    ->", {k: health[k] for k in ("status", "model", "context_length")})
print("POST /v1/chat/completions, POST /v1/completions; GET / is a chat page")

# %% [markdown]
# One request, whole: the response carries the answer and `usage`, the token counts a hosted API bills by.

# %%
messages = [{"role": "user", "content": question}]
t = time.perf_counter()
r = client.chat.completions.create(model="minimind-sft", messages=messages, temperature=0, max_tokens=48)
latency = time.perf_counter() - t
print(repr(r.choices[0].message.content), "| finish:", r.choices[0].finish_reason)
print(f"usage: {r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion = {r.usage.total_tokens} "
      f"tokens; {latency * 1000:.0f} ms")
print("same as the chat session:", r.choices[0].message.content == ChatSession(model, tokenizer, temperature=0,
                                                                               max_new_tokens=48).ask(question))

# %% [markdown]
# Streamed: the reply arrives as server-sent events, one piece of text each; the time to the first
# piece is what a user waits before anything appears.

# %%
t = time.perf_counter()
stream = client.chat.completions.create(model="minimind-sft", messages=messages, temperature=0, max_tokens=48,
                                        stream=True, stream_options={"include_usage": True})
pieces, first, usage = [], None, None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        first = first or time.perf_counter() - t
        pieces.append(chunk.choices[0].delta.content)
    usage = chunk.usage or usage
stream_seconds = time.perf_counter() - t
print(f"{len(pieces)} pieces: {pieces[:8]} ...")
print(f"first piece after {first * 1000:.0f} ms, whole reply {stream_seconds * 1000:.0f} ms, "
      f"{usage.completion_tokens} tokens -> {usage.completion_tokens / stream_seconds:.0f} tokens/s")
print("streamed text == whole text:", "".join(pieces).strip() == r.choices[0].message.content)

# %% [markdown]
# A few more requests, for a steadier number: latency per request and generation throughput. The server
# generates one request at a time (a lock around the model), so this is the single-stream speed.

# %%
asks = [r["question"] for r in short[:n_requests]] if "eval" in paths else [question] * n_requests
latencies, tokens = [], 0
for ask in asks:
    t = time.perf_counter()
    out = client.chat.completions.create(model="minimind-sft", messages=[{"role": "user", "content": ask}],
                                         temperature=0, max_tokens=max_new_tokens)
    latencies.append(time.perf_counter() - t)
    tokens += out.usage.completion_tokens
server_tps = tokens / sum(latencies)
print(f"{len(asks)} requests: median latency {np.median(latencies) * 1000:.0f} ms, "
      f"{server_tps:.0f} completion tokens/s; server stats {server.engine.stats}")

# %%
# NBVAL_CHECK_OUTPUT
port = server.server_address[1]
stack.close()  # shutdown, close the socket, join the thread
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    stopped = False
except OSError:
    stopped = True
print("server stopped, port closed:", stopped)

# %% [markdown]
# ## Export to transformers
# `export_hf` writes a folder that `transformers` opens without custom code: the dense MiniMind *is* a
# Llama (same weight names, same RoPE, RMSNorm and SwiGLU), so it is saved as a `LlamaForCausalLM`, with
# the tokenizer and its chat template. Then any transformers tool applies, `pipeline` included.

# %%
# NBVAL_CHECK_OUTPUT
import transformers
from minimind.use.export import export_hf

transformers.utils.logging.disable_progress_bar()   # no "Loading weights" bars in the page
transformers.utils.logging.set_verbosity_error()

hf_dir = export_hf(sft_dir, run_dir / "export" / "hf")
hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
probe = torch.tensor([tokenizer.encode("Rusar lives in Bimur. " * 3)])
with torch.no_grad():
    ours, theirs = model.cpu()(probe).logits, hf_model(probe).logits
print(type(hf_model).__name__, sorted(p.name for p in hf_dir.iterdir()))
print("exported logits equal (atol 1e-4):", torch.allclose(ours, theirs, atol=1e-4))

# %%
pipe = transformers.pipeline("text-generation", model=str(hf_dir), device="cpu")
out = pipe([{"role": "user", "content": question}], max_new_tokens=48, do_sample=False)
answer = out[0]["generated_text"][-1]["content"]
print("transformers pipeline:", repr(answer))
print("same as MiniMind's own generate:", answer.strip() == r.choices[0].message.content)

# %% [markdown]
# ## Export to GGUF
# GGUF is llama.cpp's single-file format: metadata (architecture, sizes, RoPE settings, the whole
# tokenizer and chat template) and the tensors under llama.cpp's names (`blk.N.attn_q`...). Reading the
# file back with the `gguf` package's reader shows what llama.cpp will see.

# %%
# NBVAL_CHECK_OUTPUT
import gguf
from minimind.use.gguf import export_gguf, gguf_tensors

gguf_file = export_gguf(sft_dir, run_dir / "export" / "minimind-sft.gguf")
reader = gguf.GGUFReader(str(gguf_file))
meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
for k in ("general.architecture", "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
          "llama.attention.head_count_kv", "llama.context_length", "tokenizer.ggml.model"):
    print(f"{k:32s} {meta[k]}")
print(f"{len(reader.tensors)} tensors; the first layer's and the shared ones:")
for t in reader.tensors:
    if not t.name.startswith("blk.") or t.name.startswith("blk.0."):
        print(f"   {t.name:26s} {list(t.data.shape)}  {t.tensor_type.name}")
written = gguf_tensors(model)
print("read back == written:", all(np.array_equal(np.array(t.data), written[t.name]) for t in reader.tensors))

# %%
print(f"{gguf_file.name}: {gguf_file.stat().st_size / 1e6:.1f} MB; vocabulary of {len(meta['tokenizer.ggml.tokens'])} "
      f"tokens; chat template starts {meta['tokenizer.chat_template'][:60]!r}")

# %% [markdown]
# With llama.cpp installed, `llama-cli -m minimind-sft.gguf -cnv` chats with this file, and
# `ollama create minimind -f Modelfile` (a Modelfile saying `FROM ./minimind-sft.gguf`) serves it.
#
# ## A checkpoint MiniMind published
# The same yardsticks and the same chat work on MiniMind's own models. Set `published` in the parameters
# to a hub id (`jingyaogong/minimind-3`, `jingyaogong/MiniMind2-Small`: downloaded once into the
# Hugging Face cache) or to a folder: one downloaded by hand, one written by MiniMind's code, or one made
# from its `.pth` with `minimind import full_sft_768.pth --out DIR --tokenizer MINIMIND/model`.
# `load_checkpoint` maps MiniMind's config keys onto ours and brings its tokenizer with its chat template
# (minimind-3's closes an empty `<think>` block unless thinking is asked for). Offline, the download fails
# at once, saying what to fetch by hand, and the chapter goes on without it. MiniMind's models learned
# mostly Chinese text, not this course's world, so their perplexity here is high; the chat shows them.

# %%
published_ppl = None
if not published:
    print("published is empty: set it to e.g. 'jingyaogong/minimind-3' to measure and chat with that model")
else:
    try:
        mm_model, mm_tokenizer = load_checkpoint(published, device=dev)
    except (FileNotFoundError, ValueError) as err:  # offline (a DownloadError), or not a MiniMind checkpoint
        print(f"skipped {published}:\n{err}")
    else:
        c = mm_model.config
        print(f"{published}: {mm_model.num_parameters() / 1e6:.1f}M parameters, {c.num_hidden_layers} layers, "
              f"hidden {c.hidden_size}, q/k-norm {c.qk_norm}, chat template {mm_tokenizer.template!r}")
        published_ppl = perplexity(mm_model, mm_tokenizer, held_out[:ppl_docs])["perplexity"]
        print(f"perplexity on the course's held-out text: {published_ppl:.1f} "
              f"(the course's pretrained model: {by_stage['pretrain']['perplexity']:.1f})")
        mm_chat = ChatSession(mm_model, mm_tokenizer, temperature=0, max_new_tokens=96)
        for q in ("你好，请介绍一下你自己。", question):
            print("user:", q)
            print("assistant:", mm_chat.ask(q))

# %% [markdown]
# ## What we measured

# %%
metrics = {f"{s}_{k}": round(float(v), 4) for s, r in by_stage.items()
           for k, v in r.items() if k in ("perplexity", "bits_per_byte", "mc_accuracy", "exact_match", "em_heldout")
           and v is not None}
record(run_dir, "13_eval_serve", stages=",".join(by_stage), **metrics,
       yarn_ppl_longest=round(curve["yarn"][-1], 3), rope_ppl_longest=round(curve["rope"][-1], 3),
       longest_len=lengths[-1], server_latency_ms=round(float(np.median(latencies)) * 1000),
       server_first_token_ms=round(first * 1000), server_tokens_per_s=round(server_tps, 1),
       hf_logits_equal=bool(torch.allclose(ours, theirs, atol=1e-4)), eval_seconds=round(eval_seconds, 1),
       **({"published": published, "published_perplexity": round(published_ppl, 2)} if published_ppl else {}))

# %% [markdown]
# ## Exercises
# Each exercise ends in `check(...)`, which says whether your answer is right and, if it is not, what is
# wrong and a hint. Try before you look: each solution is in the collapsed cell after its exercise (click
# it to open; in the book, "Show code cell source").

# %%
from minimind.course.exercises import check

# %% [markdown]
# **1. Perplexity (implement).** Write `perplexity(texts)` where each text is a list of its tokens' negative
# log-likelihoods (nats): one number for all the texts together, as `minimind eval` reports it.

# %%
def perplexity(texts):
    ...  # your code: a float


check("13.perplexity", perplexity)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
import math


def perplexity(texts):
    tokens = [nll for text in texts for nll in text]
    return math.exp(sum(tokens) / len(tokens))  # pool the tokens: a long text weighs more than a short one


assert check("13.perplexity", perplexity)

# %% [markdown]
# **2. A request (write).** Write the JSON body a client sends to the server's `/v1/chat/completions`: a
# system message, a user question, greedy decoding, at most 32 new tokens. The check parses it as the server
# does.

# %%
body = None  # your dict
check("13.request", body)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
body = {"model": "minimind", "temperature": 0, "max_tokens": 32,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Where does Rusar live?"}]}
assert check("13.request", body)
