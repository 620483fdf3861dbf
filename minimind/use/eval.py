"""Measure a checkpoint: perplexity, bits per byte, multiple-choice and exact-match accuracy, YaRN length curves.

Bits per byte = total NLL in bits / UTF-8 bytes (tokenizer-independent). Multiple choice (C-Eval, CMMLU, MMLU,
ARC, eval.jsonl) takes the likeliest option (`accuracy_norm`: per byte); exact match grades greedy replies with
answers.answer_matches.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

# the chapters import both from here, with the rest of the grading
from .answers import answer_matches, extract_numbers  # noqa: F401

LETTERS = "ABCDEFGHIJ"




def _jsonl_records(path: Path):
    """(line number, record) for each non-blank line; a line that is not JSON names file and line."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{n}: not JSON ({err}); fix or delete the line") from None


# -- perplexity ---------------------------------------------------------------------------------------------
def read_documents(path, limit: Optional[int] = None) -> list[str]:
    """Texts of a file: a .jsonl of {"text"} (or conversations, rendered as plain text), else the whole file.
    limit: stop after that many documents (a pretraining file can be gigabytes)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".jsonl":
        docs = []
        for n, rec in _jsonl_records(path):
            if isinstance(rec, dict) and isinstance(rec.get("text"), str):
                docs.append(rec["text"])
            elif isinstance(rec, dict) and isinstance(rec.get("conversations"), list):
                docs.append("\n".join(str(m.get("content", "")) for m in rec["conversations"]))
            else:
                raise ValueError(f"{path}:{n}: expected {{\"text\": ...}} or {{\"conversations\": ...}}")
            if limit and len(docs) >= limit:
                break
        return docs
    return [path.read_text(encoding="utf-8")]


@torch.no_grad()
def token_nll(model, ids: Sequence[int], window: Optional[int] = None, stride: Optional[int] = None) -> torch.Tensor:
    """NLL (nats) of ids[1:] given what precedes, each token once. Texts longer than the window are read in
    overlapping windows moved by `stride`, each new token seeing up to window - stride earlier ones."""
    window = window or model.config.max_position_embeddings
    stride = min(max(1, stride or window // 2), window - 1)
    ids = torch.as_tensor(list(ids), dtype=torch.long, device=model.device)
    out, done = [], 1  # positions < done are scored
    start = 0
    while done < len(ids):
        end = min(start + window, len(ids))
        chunk = ids[start:end][None]  # (1, W)
        logits = model(chunk).logits[0, :-1].float()  # (W - 1, V)
        nll = F.cross_entropy(logits, chunk[0, 1:], reduction="none")  # (W - 1,)
        out.append(nll[done - start - 1:])
        done = end
        start = max(end - (window - stride), start + 1) if end < len(ids) else end
    return torch.cat(out) if out else torch.zeros(0, device=model.device)


@torch.no_grad()
def perplexity(model, tokenizer, texts, window: Optional[int] = None, stride: Optional[int] = None,
               limit: Optional[int] = None) -> dict:
    """Perplexity and bits per byte (total NLL / ln 2 / UTF-8 bytes) over texts (documents, or a file path).
    Each document is read as in pretraining, <|im_start|> text <|im_end|>; every token after the first counts."""
    if isinstance(texts, (str, Path)) and Path(texts).exists():
        texts = read_documents(texts)
    elif isinstance(texts, str):
        texts = [texts]
    texts = list(texts)[:limit] if limit else list(texts)
    if not texts:
        raise ValueError("no text to evaluate")
    model.eval()
    total, count, nbytes = 0.0, 0, 0
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer.encode(text) + [tokenizer.eos_token_id]
        nll = token_nll(model, ids, window, stride)
        total += float(nll.sum())
        count += nll.numel()
        nbytes += len(text.encode("utf-8"))
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "bits_per_byte": total / math.log(2) / max(nbytes, 1),
            "tokens": count, "bytes": nbytes, "documents": len(texts)}


# -- multiple choice ----------------------------------------------------------------------------------------
@dataclass
class MCQuestion:
    question: str
    choices: list[str]
    label: Optional[int]               # index of the right choice (None if the file has no answers)
    id: str = ""
    subject: str = ""
    choice_texts: Optional[list[str]] = None   # full-sentence answers (the course's eval.jsonl)
    meta: dict = field(default_factory=dict)


def _label_index(answer, n: int, where: str) -> Optional[int]:
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return None
    a = str(answer).strip()
    if a.upper() in LETTERS[:n]:
        return LETTERS.index(a.upper())
    if a.isdigit() and 1 <= int(a) <= n:  # ARC sometimes labels 1-4
        return int(a) - 1
    raise ValueError(f"{where}: answer {answer!r} is not one of {', '.join(LETTERS[:n])}")


def _read_csv(path: Path) -> list[MCQuestion]:
    """C-Eval (id,question,A,B,C,D,answer[,explanation]), CMMLU (,Question,A,B,C,D,Answer) or MMLU
    (no header: question,A,B,C,D,answer)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    head = [h.strip().lower() for h in rows[0]]
    out = []
    subject = path.stem.replace("_test", "").replace("_val", "").replace("_dev", "")
    if "question" in head and "a" in head and "b" in head:
        q, opts = head.index("question"), [head.index(c) for c in "abcd" if c in head]
        ans = head.index("answer") if "answer" in head else None
        ids = head.index("id") if "id" in head else (0 if head[0] == "" else None)
        for n, row in enumerate(rows[1:], 2):
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{n}"
            if len(row) < len(head):
                raise ValueError(f"{where}: {len(row)} columns, expected {len(head)} ({', '.join(rows[0])})")
            choices = [row[i] for i in opts]
            out.append(MCQuestion(row[q], choices, _label_index(row[ans] if ans is not None else None,
                                                                len(choices), where),
                                  id=row[ids] if ids is not None else str(n), subject=subject))
        return out
    for n, row in enumerate(rows, 1):  # MMLU: no header
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{n}"
        if len(row) < 6:
            raise ValueError(f"{where}: {len(row)} columns; an MMLU row is question,A,B,C,D,answer (a C-Eval or "
                             "CMMLU file starts with a header row naming question, A, B, C, D, answer)")
        out.append(MCQuestion(row[0], row[1:-1], _label_index(row[-1], len(row) - 2, where), id=str(n),
                              subject=subject))
    return out


def _from_record(rec: dict, where: str) -> MCQuestion:
    if rec.get("type") == "mc" or ("choices" in rec and "label" in rec and isinstance(rec["choices"], list)):
        # the course's eval.jsonl
        return MCQuestion(rec["question"], list(rec["choices"]), rec.get("label"), id=str(rec.get("id", "")),
                          subject=rec.get("relation", ""), choice_texts=rec.get("choice_texts"),
                          meta={"split": rec.get("split")})
    q = rec.get("question")
    if isinstance(q, dict):  # AI2 ARC: {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}
        stem, choices = q.get("stem", ""), q.get("choices", [])
        labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
    elif isinstance(rec.get("choices"), dict):  # Hugging Face ARC: {"question", "choices": {"text", "label"}}
        stem, labels, texts = q, list(rec["choices"]["label"]), list(rec["choices"]["text"])
    elif isinstance(rec.get("choices"), list) and rec["choices"] and isinstance(rec["choices"][0], dict):
        stem, labels = q, [c["label"] for c in rec["choices"]]
        texts = [c["text"] for c in rec["choices"]]
    elif all(k in rec for k in ("A", "B")):  # a C-Eval / CMMLU row as JSON
        stem = q
        labels = [k for k in LETTERS if k in rec]
        texts = [rec[k] for k in labels]
        ans = rec.get("answer", rec.get("Answer"))
        return MCQuestion(stem, texts, _label_index(ans, len(texts), where), id=str(rec.get("id", "")),
                          subject=rec.get("subject", ""))
    else:
        raise ValueError(f"{where}: not a multiple-choice record (expected ARC's question/choices/answerKey, "
                         "C-Eval's question/A/B/C/D/answer or the course's question/choices/label)")
    if not isinstance(stem, str) or not texts:
        raise ValueError(f"{where}: question or choices missing")
    key = rec.get("answerKey", rec.get("answer"))
    label = None
    if key is not None:
        if str(key) not in [str(x) for x in labels]:
            raise ValueError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
        label = [str(x) for x in labels].index(str(key))
    return MCQuestion(stem, texts, label, id=str(rec.get("id", "")), subject=rec.get("subject", ""))


def load_multiple_choice(path, limit: Optional[int] = None) -> list[MCQuestion]:
    """Questions from a local file: C-Eval / CMMLU / MMLU .csv, ARC .json/.jsonl, or the course's eval.jsonl
    (its multiple-choice records; the short-answer ones are skipped). The format is told by the content."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix.lower() in (".csv", ".tsv"):
        qs = _read_csv(path)
    elif path.suffix.lower() in (".json", ".jsonl"):
        text = path.read_text(encoding="utf-8")
        stripped = text.lstrip()
        if path.suffix.lower() == ".json" and stripped.startswith("["):
            recs = [(f"{path}[{i}]", r) for i, r in enumerate(json.loads(text))]
        else:
            recs = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        recs.append((f"{path}:{n}", json.loads(line)))
                    except ValueError as err:
                        raise ValueError(f"{path}:{n}: not JSON ({err}); fix or delete the line") from None
        qs = [_from_record(r, where) for where, r in recs
              if not (isinstance(r, dict) and r.get("type") == "short")]
    else:
        raise ValueError(f"{path}: unknown multiple-choice format {path.suffix!r}; use .csv (C-Eval, CMMLU, "
                         "MMLU) or .json/.jsonl (ARC, the course's eval.jsonl)")
    return qs[:limit] if limit else qs


def format_question(q: MCQuestion, with_options: bool = True) -> str:
    """The prompt an option is scored after: the question, the lettered options, then 'Answer:'."""
    lines = [q.question.strip()]
    if with_options:
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)]
    lines.append("Answer:")
    return "\n".join(lines)


@torch.no_grad()
def continuation_logprobs(model, context: list[int], continuations: list[list[int]]) -> list[float]:
    """Sum of log p(continuation tokens | context) for each continuation, in one padded batch."""
    ctx_room = model.config.max_position_embeddings - max(len(c) for c in continuations)
    if ctx_room < 1:
        raise ValueError("an answer option is longer than the model's context")
    context = context[-ctx_room:]
    seqs = [context + c for c in continuations]
    width = max(len(s) for s in seqs)
    batch = torch.zeros(len(seqs), width, dtype=torch.long, device=model.device)  # (C, T) one row per option
    for i, s in enumerate(seqs):
        batch[i, :len(s)] = torch.tensor(s)
    logp = F.log_softmax(model(batch).logits.float(), dim=-1)  # (C, T, V); right padding: causal, padding unseen
    out = []
    for i, c in enumerate(continuations):
        pos = torch.arange(len(context) - 1, len(context) - 1 + len(c), device=model.device)
        out.append(float(logp[i, pos, torch.tensor(c, device=model.device)].sum()))
    return out


def score_question(model, tokenizer, q: MCQuestion, chat: bool = False, style: str = "text") -> dict:
    """Log-likelihood of each option after the question. style "text": the option's text (or choice_texts
    sentence) after the bare question; "letter": " A", " B", ... after the lettered options (MMLU's way)."""
    if style not in ("text", "letter"):
        raise ValueError(f"unknown scoring style {style!r}: use text or letter")
    if style == "letter":
        prompt, conts = format_question(q, True), [f" {LETTERS[i]}" for i in range(len(q.choices))]
    elif q.choice_texts:
        prompt, conts = q.question.strip(), list(q.choice_texts)
    else:
        prompt, conts = format_question(q, False), [f" {c}" for c in q.choices]
    if chat:
        ctx = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        conts = [c.strip() for c in conts]
    else:
        ctx = [tokenizer.bos_token_id] + tokenizer.encode(prompt + ("" if style == "letter" else "\n" if
                                                                    q.choice_texts else ""))
    cont_ids = [tokenizer.encode(c) or [tokenizer.eos_token_id] for c in conts]
    lls = continuation_logprobs(model, ctx, cont_ids)
    per_byte = [ll / max(len(c.encode("utf-8")), 1) for ll, c in zip(lls, conts)]
    pred = max(range(len(lls)), key=lambda i: lls[i])
    pred_norm = max(range(len(lls)), key=lambda i: per_byte[i])
    return {"id": q.id, "loglik": lls, "pred": pred, "pred_norm": pred_norm, "label": q.label,
            "correct": q.label is not None and pred == q.label,
            "correct_norm": q.label is not None and pred_norm == q.label}


def multiple_choice_accuracy(model, tokenizer, questions, chat: bool = False, style: str = "text",
                             limit: Optional[int] = None) -> dict:
    """Accuracy over questions (a list of MCQuestion or a file for load_multiple_choice). Chance level
    (1 / options) is reported beside it; questions without an answer are skipped."""
    if isinstance(questions, (str, Path)):
        questions = load_multiple_choice(questions, limit)
    questions = [q for q in questions if q.label is not None][:limit] if limit else \
        [q for q in questions if q.label is not None]
    if not questions:
        raise ValueError("no multiple-choice questions with answers to score")
    model.eval()
    rows = [score_question(model, tokenizer, q, chat, style) for q in questions]
    n = len(rows)
    return {"accuracy": sum(r["correct"] for r in rows) / n,
            "accuracy_norm": sum(r["correct_norm"] for r in rows) / n,
            "chance": sum(1 / len(q.choices) for q in questions) / n, "n": n, "rows": rows}


# -- exact match --------------------------------------------------------------------------------------------
def load_short_answers(path, limit: Optional[int] = None) -> list[dict]:
    """{"question", "answer"} records of a .jsonl: the course's eval.jsonl short-answer records (type
    "short"), or any lines with a question (or a prompt, or a one-user-turn conversation) and an answer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    out = []
    for n, rec in _jsonl_records(path):
        if rec.get("type", "short") != "short":
            continue
        q = rec.get("question", rec.get("prompt"))
        if q is None and isinstance(rec.get("conversations"), list):
            users = [m["content"] for m in rec["conversations"] if m.get("role") == "user"]
            q = users[-1] if users else None
        if q is None or rec.get("answer") is None:
            raise ValueError(f"{path}:{n}: a short-answer record needs \"question\" (or \"prompt\" or "
                             "\"conversations\") and \"answer\"")
        out.append({"id": rec.get("id", str(n)), "question": q, "answer": rec["answer"],
                    "split": rec.get("split")})
    return out[:limit] if limit else out


@torch.no_grad()
def exact_match_accuracy(model, tokenizer, records, chat: bool = True, max_new_tokens: int = 48,
                         mode: str = "auto", batch_size: int = 16, limit: Optional[int] = None) -> dict:
    """Greedy answers to short questions, graded by answer_matches. records: dicts with "question" and
    "answer", or a .jsonl path (load_short_answers). Accuracy overall and per "split" when there is one."""
    if isinstance(records, (str, Path)):
        records = load_short_answers(records, limit)
    records = list(records)[:limit] if limit else list(records)
    if not records:
        raise ValueError("no short-answer questions to score")
    from ..model.generation import complete_batch
    model.eval()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}],
                                             add_generation_prompt=True, tokenize=True) if chat
               else [tokenizer.bos_token_id] + tokenizer.encode(r["question"]) for r in records]
    outputs = complete_batch(model, tokenizer, prompts, max_new_tokens, batch_size, do_sample=False)
    rows = [{"id": r.get("id"), "question": r["question"], "answer": r["answer"], "output": text,
             "split": r.get("split"), "correct": answer_matches(text, r["answer"], mode)}
            for r, text in zip(records, outputs)]
    result = {"accuracy": sum(r["correct"] for r in rows) / len(rows), "n": len(rows), "rows": rows}
    splits = sorted({r["split"] for r in rows if r["split"]})
    if splits:
        result["by_split"] = {s: sum(r["correct"] for r in rows if r["split"] == s) /
                              sum(1 for r in rows if r["split"] == s) for s in splits}
    return result


def evaluate_course(model, tokenizer, eval_path, chat: bool = True, limit: Optional[int] = None) -> dict:
    """The course's held-out questions (eval.jsonl): exact match on the short ones (per split: heldout
    facts, facts seen in SFT, arithmetic) and likelihood accuracy on the multiple-choice ones."""
    return {"short": exact_match_accuracy(model, tokenizer, eval_path, chat=chat, limit=limit),
            "mc": multiple_choice_accuracy(model, tokenizer, eval_path, chat=chat, limit=limit)}


# -- length and YaRN ----------------------------------------------------------------------------------------
def with_rope_scaling(model, rope_scaling: Optional[dict], max_position_embeddings: int):
    """The same weights under another RoPE: a new model sharing every parameter, with rope_scaling (None:
    plain RoPE, read past its training length) and a longer position limit."""
    import dataclasses

    from ..model.transformer import MiniMindForCausalLM
    config = dataclasses.replace(model.config, rope_scaling=rope_scaling,
                                 max_position_embeddings=max_position_embeddings)
    with torch.device("meta"):
        other = MiniMindForCausalLM(config)
    other.load_state_dict(model.state_dict(), assign=True, strict=True)
    if config.tie_word_embeddings:
        other.lm_head.weight = other.model.embed_tokens.weight
    from ..model.rope import inv_freq_for
    inv_freq, other.model.attention_factor = inv_freq_for(config)
    other.model.inv_freq = inv_freq.to(model.device)
    return other.eval()


@torch.no_grad()
def perplexity_by_length(model, tokenizer, texts, lengths: Iterable[int], rope_scaling: Optional[dict] = None,
                         max_windows: int = 8) -> list[dict]:
    """Per length L: perplexity of L-token windows of the joined texts, and of their last quarter (the farthest
    positions); rope_scaling (e.g. {"rope_type": "yarn", "factor": 4, ...}) reads them with YaRN."""
    if isinstance(texts, (str, Path)) and Path(texts).exists():
        texts = read_documents(texts)
    elif isinstance(texts, str):
        texts = [texts]
    lengths = sorted(int(n) for n in lengths)
    ids: list[int] = []
    for t in texts:
        ids += [tokenizer.bos_token_id] + tokenizer.encode(t) + [tokenizer.eos_token_id]
        if len(ids) >= lengths[-1] * max_windows:
            break
    if len(ids) < lengths[-1]:
        raise ValueError(f"the text is {len(ids)} tokens, shorter than the longest length {lengths[-1]}")
    m = with_rope_scaling(model, rope_scaling, max(lengths[-1], model.config.max_position_embeddings))
    out = []
    for L in lengths:
        n = max(1, min(max_windows, len(ids) // L))
        batch = torch.tensor([ids[i * L:(i + 1) * L] for i in range(n)], device=model.device)  # (n, L)
        logits = m(batch).logits[:, :-1].float()  # (n, L - 1, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1),
                              reduction="none").view(n, L - 1)
        tail = nll[:, -max(1, (L - 1) // 4):]  # (n, (L - 1) // 4): the farthest positions
        out.append({"length": L, "windows": n, "loss": float(nll.mean()), "perplexity": math.exp(float(nll.mean())),
                    "tail_perplexity": math.exp(float(tail.mean()))})
    return out


def yarn_length_curve(model, tokenizer, texts, lengths: Iterable[int], factor: Optional[float] = None,
                      original_max_position_embeddings: Optional[int] = None, max_windows: int = 8) -> dict:
    """Perplexity against length with plain RoPE and with YaRN: {"lengths", "rope", "yarn", ...}. By default the
    original length is the model's and factor reaches the longest length."""
    lengths = sorted(int(n) for n in lengths)
    orig = original_max_position_embeddings or model.config.max_position_embeddings
    factor = factor or max(1.0, lengths[-1] / orig)
    yarn = {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": orig}
    plain = perplexity_by_length(model, tokenizer, texts, lengths, None, max_windows)
    scaled = perplexity_by_length(model, tokenizer, texts, lengths, yarn, max_windows)
    return {"lengths": lengths, "original_max_position_embeddings": orig, "factor": factor,
            "rope": [r["perplexity"] for r in plain], "yarn": [r["perplexity"] for r in scaled],
            "rope_tail": [r["tail_perplexity"] for r in plain], "yarn_tail": [r["tail_perplexity"] for r in scaled]}


def rl_accuracy(model, tokenizer, rl_jsonl, max_new_tokens: int = 24, batch_size: int = 32,
                limit: Optional[int] = None) -> dict:
    """Greedy accuracy (`answer_matches`) on RL prompts with a checkable "answer" (rl.jsonl, rl_val.jsonl).
    Prompts without one are skipped; if none has one: {"accuracy": nan, "n": 0, "rows": []}."""
    from ..data.records import read_jsonl
    records = []
    for i, rec in enumerate(read_jsonl(rl_jsonl, "rl")):
        answer = rec.get("answer")
        users = [m["content"] for m in rec["conversations"] if m.get("role") == "user"]
        if answer is not None and str(answer).strip() and users:
            records.append({"id": str(i), "question": users[-1], "answer": str(answer)})
    records = records[:limit] if limit else records
    if not records:
        return {"accuracy": math.nan, "n": 0, "rows": []}
    return exact_match_accuracy(model, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=batch_size)


def tool_task_accuracy(model, tokenizer, tasks, toolbox=None, max_turns: int = 3, max_new_tokens: int = 48,
                       batch_size: int = 64, **sampling) -> dict:
    """Task success on tool tasks (tool_eval.jsonl, tool_rl_val.jsonl: prompts whose system turn carries the
    tools, and an "answer"): with a toolbox, multi-turn episodes that run the calls; without one (toolbox=None),
    the question alone, answered from what the model knows. Greedy unless sampling says otherwise.
    -> {"accuracy", "n", "by_kind": {kind: accuracy}, "rows": [...], "episodes": [messages per task]}."""
    from ..align.agent import agent_rollouts
    from ..data.datasets import template_of
    from ..data.records import read_jsonl
    from ..model.generation import generate_replies
    records = list(read_jsonl(tasks, "rl")) if isinstance(tasks, (str, Path)) else list(tasks)
    replies, episodes = [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        if toolbox is None:
            convs = [[m for m in r["conversations"] if m["role"] != "system"] for r in chunk]
            replies += generate_replies(model, tokenizer, convs, max_new_tokens=max_new_tokens,
                                        batch_size=batch_size, **sampling)
            episodes += [[{"role": "assistant", "content": x}] for x in replies[-len(chunk):]]
            continue
        prompts = [tokenizer.encode(tokenizer.apply_chat_template(r["conversations"], add_generation_prompt=True,
                                                                   tools=toolbox.schemas())) for r in chunk]
        runs = agent_rollouts(model, tokenizer, template_of(tokenizer), toolbox, prompts, max_turns,
                              max_new_tokens, **sampling)
        replies += [r.answer for r in runs]
        episodes += [r.messages for r in runs]
    rows = [dict(question=r["conversations"][-1]["content"], answer=str(r["answer"]), kind=r.get("kind", "task"),
                 reply=x, correct=answer_matches(x, str(r["answer"]))) for r, x in zip(records, replies)]
    kinds = sorted({row["kind"] for row in rows})
    by_kind = {k: sum(x["correct"] for x in rows if x["kind"] == k) / sum(x["kind"] == k for x in rows) for k in kinds}
    return {"accuracy": sum(x["correct"] for x in rows) / max(len(rows), 1), "n": len(rows), "by_kind": by_kind,
            "rows": rows, "episodes": episodes}


# -- every stage of a run, side by side (chapter 13) -------------------------------------------------------
# the course's stages in reading order; "reward" is left out: a reward model is a scorer, not a language model
COURSE_STAGES = ("pretrain", "sft", "lora", "reason", "distill", "dpo", "ppo", "grpo", "spo")


def find_checkpoints(run_dir, stages: Sequence[str] = COURSE_STAGES) -> dict:
    """{stage: folder} for the finished checkpoints in run_dir, in course order: run_dir/STAGE holding
    summary.json (written when a run ends) and weights (model.safetensors, or a LoRA adapter)."""
    found = {}
    for stage in stages:
        folder = Path(run_dir) / stage
        if (folder / "summary.json").exists() and any((folder / f).exists() for f in
                                                      ("model.safetensors", "adapter.safetensors")):
            found[stage] = folder
    return found


@torch.no_grad()
def evaluate_checkpoints(run_dir, paths: dict, stages: Optional[Sequence[str]] = None, device=None,
                         ppl_docs: int = 64, limit: Optional[int] = None, max_new_tokens: int = 32) -> list[dict]:
    """One row per finished checkpoint: perplexity, bits_per_byte (paths["pretrain_val"]), mc_accuracy, mc_chance,
    exact_match, em_<split> (None without paths["eval"]; chat template except for pretrain), answers, seconds."""
    import time

    from ..model import load_checkpoint
    from ..train.runtime import pick_device
    device = pick_device(device or "auto")
    found = find_checkpoints(run_dir, stages or COURSE_STAGES)
    ppl_texts = read_documents(paths.get("pretrain_val") or paths["pretrain"], limit=ppl_docs)
    eval_file = paths.get("eval")
    has_eval = eval_file is not None and Path(eval_file).exists()
    rows = []
    for stage, folder in found.items():
        start = time.perf_counter()
        model, tok = load_checkpoint(folder, device=device)
        row = {"stage": stage, "params_M": round(model.num_parameters() / 1e6, 2)}
        ppl = perplexity(model, tok, ppl_texts)
        row.update(perplexity=ppl["perplexity"], bits_per_byte=ppl["bits_per_byte"])
        if has_eval:
            mc = multiple_choice_accuracy(model, tok, eval_file, chat=False, limit=limit)
            em = exact_match_accuracy(model, tok, eval_file, chat=stage != "pretrain",
                                      max_new_tokens=max_new_tokens, limit=limit)
            row.update(mc_accuracy=mc["accuracy"], mc_chance=mc["chance"], exact_match=em["accuracy"],
                       **{f"em_{s}": v for s, v in em.get("by_split", {}).items()})
            row["answers"] = em["rows"]
        else:
            row.update(mc_accuracy=None, mc_chance=None, exact_match=None, answers=[])
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        del model
    return rows


def markdown_table(rows: list[dict], columns: Optional[Sequence[str]] = None, digits: int = 3) -> str:
    """rows (dicts) as a Markdown table: the given columns (a list of keys, or {key: header}; default:
    every key whose values are not lists or dicts), floats rounded to `digits` decimals, missing values '-'."""
    if not rows:
        return ""
    if columns is None:
        columns = [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))]
        columns += [k for r in rows for k in r if k not in columns and not isinstance(r[k], (list, dict))]
    headers = list(columns.values()) if isinstance(columns, dict) else list(columns)
    columns = list(columns)

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
