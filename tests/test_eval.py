"""Evaluation: answer matching, the loaders of each benchmark format (on fixtures in data/fixtures/eval),
likelihood scoring, perplexity and bits per byte, exact match, perplexity against length with YaRN."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoint import make_checkpoint

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.cli import main as cli
from minimind.model import load_checkpoint
from minimind.use import answers
from minimind.use import eval as ev

FIX = Path(__file__).resolve().parent.parent / "data" / "fixtures" / "eval"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("eval") / "ckpt", context=128)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_checkpoint(ckpt)


# -- answers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,ref,ok", [
    ("Mira is a baker.", "baker", True),
    ("Mira is a Baker!", "baker", True),
    ("Mira bakes bread.", "baker", False),
    ("She lives in Old Tallow.", "old tallow", True),
    ("She lives in Tallow Old.", "old tallow", False),
    ("12 plus 30 is 42.", "42", True),
    ("12 plus 30 is 43.", "42", False),
    ("It is 142.", "42", False),
    ("the answer: 1,024", "1024", True),
    ("answer is 3.50", "3.5", True),
    ("-7", "-7", True),
    ("7", "-7", False),
    ("x = -7", "-7", True),
    ("12-5 is 7", "7", True),
    ("12-5", "-5", False),
    ("<think>maybe 40? no, 42... let me check 41</think>The answer is 42", "42", True),
    ("<think>it is 42</think>I think 41", "42", False),
    ("答案是４２。", "42", True),
    ("北京是中国的首都。", "北京", True),
    ("北京是中国的首都。", "上海", False),
    ("", "42", False),
])
def test_answer_matches(pred, ref, ok):
    assert ev.answer_matches(pred, ref) is ok


def test_answer_match_modes():
    assert ev.answer_matches("Baker.", "the baker", mode="exact")
    assert not ev.answer_matches("Mira is a baker.", "baker", mode="exact")
    assert ev.answer_matches("42 apples", 42)  # a numeric reference
    assert answers.normalize_answer("  The Answer: 1,000 apples!! ") == "answer 1000 apples"
    assert answers.parse_number("7.") == 7 and answers.parse_number("seven") is None
    with pytest.raises(ValueError, match="not a number"):
        ev.answer_matches("x", "baker", mode="number")
    with pytest.raises(ValueError, match="mode"):
        ev.answer_matches("x", "y", mode="fuzzy")


# -- loaders ----------------------------------------------------------------------------------------------
def test_load_ceval():
    qs = ev.load_multiple_choice(FIX / "ceval_val.csv")
    assert len(qs) == 3 and [q.label for q in qs] == [0, 1, 2]
    assert qs[1].question == "中国的首都是哪座城市？" and qs[1].choices == ["上海", "北京", "广州", "深圳"]
    assert qs[0].id == "0" and qs[0].subject == "ceval"


def test_load_cmmlu():
    qs = ev.load_multiple_choice(FIX / "cmmlu_test.csv")
    assert [q.label for q in qs] == [3, 0] and qs[0].choices == ["西", "南", "北", "东"] and qs[1].id == "1"


def test_load_mmlu_headerless_with_quotes():
    qs = ev.load_multiple_choice(FIX / "mmlu_test.csv")
    assert [q.label for q in qs] == [1, 2, 0]
    assert qs[2].question == 'A question with "quotes" and a comma, inside'
    assert qs[2].choices == ["yes", "no", "maybe, later", "never"]


def test_load_arc_both_layouts():
    qs = ev.load_multiple_choice(FIX / "arc_challenge.jsonl")
    assert [q.label for q in qs] == [2, 3] and qs[1].choices[3] == "an iron nail"  # numeric labels 1-4
    assert qs[0].id == "Mercury_7175875"
    hf = ev.load_multiple_choice(FIX / "arc_easy_hf.json")
    assert [q.label for q in hf] == [0, 1] and len(hf[1].choices) == 3


def test_load_course_eval():
    qs = ev.load_multiple_choice(FIX / "course_eval.jsonl")
    assert [q.label for q in qs] == [1, 0] and qs[0].choice_texts[1] == "Mira is a baker."
    short = ev.load_short_answers(FIX / "course_eval.jsonl")
    assert [r["answer"] for r in short] == ["baker", "42"] and short[1]["split"] == "arith"
    other = ev.load_short_answers(FIX / "short_answers.jsonl")
    assert [r["question"] for r in other][1:] == ["Name the colour of the sky on a clear day.", "What is 100 minus 1?"]


def test_bad_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: answer 'E'"):
        ev.load_multiple_choice(bad)
    short = tmp_path / "short.csv"
    short.write_text("q,a,b\n")
    with pytest.raises(ValueError, match=r"short\.csv:1: 3 columns"):
        ev.load_multiple_choice(short)
    js = tmp_path / "x.jsonl"
    js.write_text('{"question": {"stem": "q", "choices": [{"text": "a", "label": "A"}]}, "answerKey": "A"}\n{oops\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2: not JSON"):
        ev.load_multiple_choice(js)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown multiple-choice format"):
        ev.load_multiple_choice(tmp_path / "a.txt")


# -- likelihood scoring -----------------------------------------------------------------------------------
def test_continuation_logprobs_match_one_at_a_time(loaded):
    model, tok = loaded
    ctx = tok.encode("Mira the baker likes")
    conts = [tok.encode(" apples"), tok.encode(" bread and soup"), tok.encode(" honey")]
    batched = ev.continuation_logprobs(model, ctx, conts)
    for c, got in zip(conts, batched):
        ids = torch.tensor([ctx + c])
        with torch.no_grad():
            logp = F.log_softmax(model(ids).logits[0].float(), -1)
        want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(c))
        assert got == pytest.approx(want, abs=1e-4)


def test_multiple_choice_accuracy_follows_the_likelihoods(loaded):
    model, tok = loaded
    qs = ev.load_multiple_choice(FIX / "mmlu_test.csv")
    first = ev.multiple_choice_accuracy(model, tok, qs)
    # relabel every question with the option the model prefers (or with another): accuracy 1 (or 0)
    for q, row in zip(qs, first["rows"]):
        q.label = row["pred"]
    assert ev.multiple_choice_accuracy(model, tok, qs)["accuracy"] == 1.0
    for q in qs:
        q.label = (q.label + 1) % len(q.choices)
    r = ev.multiple_choice_accuracy(model, tok, qs, style="letter")
    assert r["n"] == 3 and r["chance"] == pytest.approx(0.25)
    assert ev.multiple_choice_accuracy(model, tok, qs)["accuracy"] == 0.0
    course = ev.multiple_choice_accuracy(model, tok, FIX / "course_eval.jsonl", chat=True)
    assert course["n"] == 2 and course["chance"] == pytest.approx((1 / 4 + 1 / 2) / 2)


# -- perplexity --------------------------------------------------------------------------------------------
def test_uniform_model_has_perplexity_vocab_size(loaded, tmp_path):
    model, tok = loaded
    uniform = MiniMindForCausalLM(model.config).eval()
    with torch.no_grad():
        uniform.lm_head.weight.zero_()  # every logit 0: p = 1 / V for every token
    texts = ["Mira the baker likes apples.", "你好，我是一个小模型。"]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    r = ev.perplexity(uniform, tok, path)
    V = model.config.vocab_size
    tokens = sum(len(tok.encode(t)) + 1 for t in texts)
    nbytes = sum(len(t.encode()) for t in texts)
    assert r["perplexity"] == pytest.approx(V, rel=1e-4) and r["tokens"] == tokens and r["bytes"] == nbytes
    assert r["bits_per_byte"] == pytest.approx(tokens * math.log2(V) / nbytes, rel=1e-4)


def test_sliding_windows_score_every_token_once(loaded):
    model, tok = loaded
    ids = tok.encode(" ".join(f"Mira likes apples {i}." for i in range(30)))[:300]
    assert len(ids) > model.config.max_position_embeddings  # needs windows
    nll = ev.token_nll(model, ids, window=100, stride=40)
    assert nll.shape == (len(ids) - 1,)
    # the first window is exact; a later token is scored with 60 tokens of context
    first = F.cross_entropy(model(torch.tensor([ids[:100]])).logits[0, :-1].float(), torch.tensor(ids[1:100]),
                            reduction="none")
    torch.testing.assert_close(nll[:99], first, atol=1e-4, rtol=1e-4)
    j = 120  # the second window is ids[40:140] (60 tokens of overlap): token j sees ids[40:j]
    with torch.no_grad():
        logits = model(torch.tensor([ids[40:j + 1]])).logits[0, -2].float()
    assert float(nll[j - 1]) == pytest.approx(float(F.cross_entropy(logits[None], torch.tensor([ids[j]]))), abs=1e-4)


def test_perplexity_of_text_file(loaded, tmp_path):
    model, tok = loaded
    f = tmp_path / "t.txt"
    f.write_text("Mira the baker lives in Tallow. " * 30)
    r = ev.perplexity(model, tok, f)
    assert r["documents"] == 1 and r["tokens"] > model.config.max_position_embeddings
    assert 1 < r["perplexity"] < 10 * model.config.vocab_size and r["bits_per_byte"] > 0


# -- exact match -------------------------------------------------------------------------------------------
def test_exact_match_batched_left_padding(loaded):
    model, tok = loaded
    questions = ["Who is Mira?", "What is 3 plus 4? Tell me now.", "hi"]
    outputs = []
    for q in questions:  # one at a time, no padding
        p = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        out = model.generate(torch.tensor([p]), max_new_tokens=8, eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
        out = out[:out.index(tok.eos_token_id)] if tok.eos_token_id in out else out
        outputs.append(tok.decode(out, skip_special_tokens=True))
    right = [{"question": q, "answer": o, "split": "a"} for q, o in zip(questions, outputs) if o.strip()]
    assert right
    r = ev.exact_match_accuracy(model, tok, right, max_new_tokens=8, mode="exact", batch_size=4)
    assert r["accuracy"] == 1.0 and r["by_split"] == {"a": 1.0}
    wrong = [{**x, "answer": x["answer"] + " zebra"} for x in right]
    assert ev.exact_match_accuracy(model, tok, wrong, max_new_tokens=8, mode="exact")["accuracy"] == 0.0
    course = ev.evaluate_course(model, tok, FIX / "course_eval.jsonl")
    assert course["short"]["n"] == 2 and set(course["short"]["by_split"]) == {"heldout", "arith"}


# -- length and YaRN -----------------------------------------------------------------------------------------
def test_with_rope_scaling_is_the_same_weights_under_another_rope(loaded):
    model, tok = loaded
    x = torch.randint(0, model.config.vocab_size, (1, 50))
    same = ev.with_rope_scaling(model, None, model.config.max_position_embeddings)
    torch.testing.assert_close(same(x).logits, model(x).logits)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
    scaled = ev.with_rope_scaling(model, yarn, 512)
    direct = MiniMindForCausalLM(MiniMindConfig(**{**model.config.to_dict(), "rope_scaling": yarn,
                                                   "max_position_embeddings": 512})).eval()
    direct.load_state_dict(model.state_dict())
    torch.testing.assert_close(scaled(x).logits, direct(x).logits)
    assert not torch.allclose(scaled(x).logits, model(x).logits)


def test_yarn_length_curve(loaded):
    model, tok = loaded
    text = " ".join(f"Mira the baker likes apples and {i} plus {i} is {2 * i}." for i in range(200))
    curve = ev.yarn_length_curve(model, tok, [text], [64, 128, 256], max_windows=2)
    assert curve["lengths"] == [64, 128, 256] and curve["factor"] == 2.0
    assert curve["original_max_position_embeddings"] == 128
    assert all(math.isfinite(v) and v > 1 for v in curve["rope"] + curve["yarn"])
    assert curve["rope"][:2] != curve["yarn"][:2]
    with pytest.raises(ValueError, match="shorter than the longest"):
        ev.perplexity_by_length(model, tok, ["short text"], [64])


def test_cli_eval(ckpt, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("Mira the baker lives in Tallow.\n" * 5)
    out = tmp_path / "r.json"
    assert cli(["eval", str(ckpt), "--ppl", str(f),
                "--mc", str(FIX / "ceval_val.csv"), str(FIX / "arc_challenge.jsonl"),
                "--short", str(FIX / "short_answers.jsonl"), "--course", str(FIX / "course_eval.jsonl"),
                "--max-new-tokens", "4", "--json", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "perplexity" in text and "accuracy" in text and "exact match" in text and "course multiple choice" in text
    results = json.loads(out.read_text())
    assert results[f"mc:{FIX / 'ceval_val.csv'}"]["n"] == 3 and results["course"]["mc"]["n"] == 2
    assert cli(["eval", str(ckpt)]) == 2  # nothing asked: a clear error, not a traceback


def test_course_corpus_eval_file(tmp_path, loaded):
    """The real eval.jsonl of the course corpus: every record loads, its reference sentence passes the
    matcher and the wrong options' sentences do not."""
    from minimind.data.corpus import write_course_corpus
    path = write_course_corpus(tmp_path / "course", size="mini")["eval"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    short, mc = ev.load_short_answers(path), ev.load_multiple_choice(path)
    assert len(short) + len(mc) == len(records) and mc and {r["split"] for r in short} >= {"heldout", "arith"}
    for rec in records:
        assert ev.answer_matches(rec["answer_text"], rec["answer"]), rec
        for i, text in enumerate(rec.get("choice_texts") or []):
            assert ev.answer_matches(text, rec["answer"]) == (i == rec["label"]), (text, rec["answer"])
    model, tok = loaded
    r = ev.evaluate_course(model, tok, path, limit=4)
    assert r["short"]["n"] == 4 and r["mc"]["n"] == 4


def test_trace_check_reads_the_steps_and_whether_the_answer_follows_them():
    from minimind.use.traces import trace_check
    # the reply chapter 12 once showed: both steps wrong, the answer right, so not taken from the trace
    reply = "<think>\n4 plus 8 is 13.\n13 minus 8 is 6.\n</think>\n4 plus 8 minus 8 is 4."
    assert trace_check(reply) == {"traced": True, "steps": 2, "steps_right": 0, "result": 6, "follows": False}
    good = "<think>\nRelun starts with 2 nuts.\n2 plus 1 is 3.\n3 minus 1 is 2.\n</think>\nRelun has 2 nuts now."
    assert trace_check(good) == {"traced": True, "steps": 2, "steps_right": 2, "result": 2, "follows": True}
    assert trace_check("2 plus 1 is 3.")["traced"] is False
    assert trace_check("<think>\nI am not sure.\n</think>\n5")["follows"] is False
