"""The generated course corpus: deterministic, valid in every format, with facts split as the lesson needs."""
import hashlib
import json
import re

import pytest
from course_helpers import course, tokenizer

from minimind.cli import main
from minimind.data.corpus import LEXICONS, SIZES, build_world, corpus_paths, ensure_course_data, write_course_corpus
from minimind.data.records import check_file, iter_texts, read_jsonl
from minimind.use.eval import answer_matches

KINDS = dict(pretrain="pretrain", pretrain_val="pretrain", sft="sft", sft_val="sft", lora="sft", reason="sft",
             dpo="dpo", dpo_val="dpo", rl="rl", rl_val="rl", eval="eval", tool_sft="sft", tool_sft_val="sft",
             tool_eval="rl", tool_rl="rl", tool_rl_val="rl")


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.json*"))
            if p.name != "manifest.json"}


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    write_course_corpus(tmp_path / "a", seed=3, size="mini")
    write_course_corpus(tmp_path / "b", seed=3, size="mini")
    write_course_corpus(tmp_path / "c", seed=4, size="mini")
    a, b, c = (_digests(tmp_path / x) for x in "abc")
    assert len(a) == 18 and a == b
    assert all(a[name] != c[name] for name in a)


def test_every_file_passes_data_check(capsys):
    paths = course("small")
    for name, kind in KINDS.items():
        summary = check_file(paths[name], kind)
        assert summary["records"] > 0 and summary["bad"] == 0, name
        assert main(["data", "check", str(paths[name]), "--kind", kind]) == 0
    assert "0 bad lines" in capsys.readouterr().out


def test_small_corpus_is_sized_for_the_cpu_course():
    paths, tok = course("small"), tokenizer("small")
    lines = json.loads(paths["manifest"].read_text())["lines"]
    pretrain_tokens = sum(len(ids) for ids in tok.encode_batch(list(iter_texts(paths["pretrain"]))))
    assert 500_000 <= pretrain_tokens <= 1_500_000
    assert 2000 <= lines["sft"] <= 6000 and 1000 <= lines["dpo"] <= 2000 and 800 <= lines["rl"] <= 1500
    assert 150 <= lines["eval"] <= 300
    assert SIZES["large"]["pretrain_docs"] >= 10 * SIZES["small"]["pretrain_docs"]


def test_heldout_facts_are_only_in_pretraining_text_and_eval():
    paths = course("small")
    world = json.loads(paths["world"].read_text())
    held = [f for f in world["facts"] if f["split"] == "heldout"]
    relations = {f["relation"] for f in world["facts"]}
    assert relations == {f["relation"] for f in held} == {f["relation"] for f in world["facts"] if f["split"] == "sft"}
    evals = read_jsonl(paths["eval"], "eval")
    held_questions = {e["question"] for e in evals if e["split"] == "heldout"}
    held_answers = {e["answer_text"] for e in evals if e["split"] == "heldout"}
    assert len({(e["relation"], e["answer_text"]) for e in evals if e["split"] == "heldout"}) == len(held)
    for name in ("sft", "sft_val", "dpo", "rl", "reason"):
        for rec in read_jsonl(paths[name]):
            for m in rec.get("conversations", []) + rec.get("chosen", []):
                assert not (m["role"] == "user" and m["content"] in held_questions), (name, m)
                assert not (m["role"] == "assistant" and m["content"] in held_answers), (name, m)
    docs = [r["text"] for r in read_jsonl(paths["pretrain"], "pretrain")]
    for f in held:  # every held-out fact is stated in the pretraining text
        assert any(f["subject"] in d and f["value"] in d for d in docs), f


def test_eval_questions_are_well_formed():
    evals = read_jsonl(course("small")["eval"], "eval")
    mc = [e for e in evals if e["type"] == "mc"]
    assert mc and {e["split"] for e in evals} == {"heldout", "seen", "arith"}
    for e in mc:
        assert e["choices"][e["label"]] == e["answer"] and len(set(e["choices"])) == len(e["choices"]) >= 2
        assert e["choice_texts"][e["label"]] == e["answer_text"]
    for e in evals:
        if e["split"] == "arith":  # answer_text "a plus b is c."
            a, op, b, _, c = e["answer_text"].rstrip(".").split()
            assert e["answer"] == c and int(c) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
            assert a in e["question"] and b in e["question"]


def test_reasoning_traces_are_correct_sums():
    for rec in read_jsonl(course("small")["reason"], "sft")[:300]:
        answer = rec["conversations"][-1]["content"]
        assert answer.startswith("<think>\n") and "\n</think>\n" in answer
        for line in answer.split("\n"):
            words = line.rstrip(".").split()
            if len(words) == 5 and words[1] in ("plus", "minus") and words[3] == "is":
                a, b, c = int(words[0]), int(words[2]), int(words[4])
                assert c == (a + b if words[1] == "plus" else a - b), line


def test_world_is_consistent():
    world = build_world(0, "small")
    names = {p["name"] for p in world.people}
    assert len(world.people) == 24 and len(world.places) == 10
    for p in world.people:  # best friends come in pairs
        friend = next(q for q in world.people if q["name"] == p["friend"])
        assert friend["friend"] == p["name"] and p["friend"] in names


def test_ensure_course_data_is_cached(tmp_path):
    paths = ensure_course_data(tmp_path, size="mini")
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items() if p.is_file()}
    again = ensure_course_data(tmp_path, size="mini")
    assert {k: p.stat().st_mtime_ns for k, p in again.items() if p.is_file()} == stamps
    assert (again["tokenizer"] / "tokenizer.json").exists()
    assert set(corpus_paths(tmp_path)) <= set(again)


def test_cli_writes_the_corpus_and_tokenizer(tmp_path, capsys):
    assert main(["data", "course", "--out", str(tmp_path), "--size", "mini", "--tokenizer"]) == 0
    out = capsys.readouterr().out
    assert "pretrain.jsonl" in out and (tmp_path / "tokenizer" / "tokenizer_config.json").exists()
    assert main(["data", "course", "--out", str(tmp_path), "--size", "huge"]) == 2
    assert "unknown corpus size 'huge'" in capsys.readouterr().err


def test_tool_tasks_need_the_tools_and_the_held_out_ones_were_never_trained_on():
    from minimind.data.corpus import registry_pairs
    from minimind.data.tools import ToolCall
    from minimind.model.tools import course_tools
    paths = course("small")
    registry = json.loads(paths["registry"].read_text())
    box = course_tools(registry["people"])
    world = json.loads(paths["world"].read_text())
    names = {p["name"] for p in world["people"]}
    assert set(registry["heldout"]) == names and not names & set(registry["strangers"])
    assert set(registry["people"]) == names | set(registry["strangers"])
    corpus_text = "".join(paths[n].read_text() for n in ("pretrain", "sft", "reason", "lora", "dpo", "rl", "eval"))
    words = set(re.findall(r"\w+", corpus_text))
    for name, person in registry["people"].items():  # the register's facts are in no text the model read
        assert name in names or name not in words
        assert f"number {person['house']}" not in corpus_text and "weigh" not in corpus_text
        assert "shoe" not in corpus_text
    held = registry_pairs(registry, "heldout")
    assert len(held) == len(world["people"]) and not set(held) & set(registry_pairs(registry, "sft"))
    calls, asked = 0, set()
    for rec in read_jsonl(paths["tool_sft"], "sft"):
        msgs = rec["conversations"]
        for m, after in zip(msgs, msgs[1:]):
            for call in m.get("tool_calls") or []:  # every scripted result is what the tool returns
                assert box.run(ToolCall(call["name"], call["arguments"])) == after["content"]
                calls += 1
                if call["name"] == "lookup":
                    asked.add((call["arguments"]["name"], call["arguments"]["fact"]))
        if any(m.get("tool_calls") for m in msgs):  # the answer is the last number, as answer_matches checks it
            assert answer_matches(msgs[-1]["content"], str(json.loads(msgs[-2]["content"]).popitem()[1])), msgs
    assert calls > 1000 and not asked & set(held) and asked - {p for p in asked if p[1] == "age"}
    evals = list(read_jsonl(paths["tool_eval"], "rl"))
    assert {r["kind"] for r in evals} == {"lookup", "sum", "later"}
    assert all(r["conversations"][0]["tools"] == box.schemas() for r in evals)
    rl_questions = " ".join(r["conversations"][-1]["content"] for n in ("tool_rl", "tool_rl_val")
                            for r in read_jsonl(paths[n], "rl"))
    assert not set(re.findall(r"\w+", rl_questions)) & set(registry["strangers"])  # RL asks about the world's people
    trained = paths["tool_sft"].read_text() + paths["tool_rl"].read_text()
    sums = {tuple(int(x) for x in r["conversations"][-1]["content"].replace("?", " ").replace(".", " ").split()
                  if x.isdigit()) for r in evals if r["kind"] == "sum"}
    assert sums and not any(f"{a} plus {b} " in trained or f"{a} minus {b} " in trained for a, b in sums)


def test_course_rl_prompts_ask_known_facts_in_new_words_about_held_out_subjects():
    """Chapter 11's task: every RL prompt asks a fact the SFT data teaches, in a wording the SFT data never uses,
    and the held-out prompts ask about subjects (people, places) that no training prompt mentions."""
    paths = course("mini")
    world = json.loads(paths["world"].read_text())
    known = {(f["subject"], f["value"]) for f in world["facts"] if f["split"] == "sft"}
    subjects = {s for s, _ in known}
    sft_questions = {m["content"] for r in read_jsonl(paths["sft"]) for m in r["conversations"] if m["role"] == "user"}
    train, val = read_jsonl(paths["rl"], "rl"), read_jsonl(paths["rl_val"], "rl")
    assert len(val) >= 20 and len(train) >= 20

    def subject_and_question(record):
        question = record["conversations"][-1]["content"]
        named = {s for s in subjects if s in question.replace("?", " ").replace(".", " ").replace("'s", " ").split()}
        assert len(named) == 1, question
        return named.pop(), question
    seen = {}
    for name, records in (("train", train), ("val", val)):
        seen[name] = set()
        for record in records:
            subject, question = subject_and_question(record)
            assert (subject, record["answer"]) in known and question not in sft_questions, question
            seen[name].add(subject)
    assert seen["train"] and seen["val"] and not seen["train"] & seen["val"]
    assert set(LEXICONS["en"]["rl_ask"]) <= set(LEXICONS["en"]["relations"])


def test_every_rl_question_names_the_template_and_fields_it_was_written_from():
    from minimind.course.wordings import RL_KINDS, TOOL_RL_KINDS, wording
    from minimind.data import read_jsonl
    paths = course()
    for kind, files in ((RL_KINDS, ("rl", "rl_val")), (TOOL_RL_KINDS, ("tool_rl", "tool_rl_val"))):
        for name in files:
            for r in read_jsonl(paths[name], "rl"):
                question = r["conversations"][-1]["content"]
                key, template, fields = wording(question, kind)
                assert template is not None, (kind, question)
                assert template.format(**fields) == question  # the template, filled in, gives the question back
                if "name" in fields:
                    assert fields["name"] in question and fields["name"][0].isupper()
    assert wording("Where is Mavi from?") == ("home", "Where is {name} from?", {"name": "Mavi"})
    assert wording("What colour is the sky?") == (None, None, {})
    with pytest.raises(ValueError, match="no 'nope' templates"):
        wording("x", "nope")
