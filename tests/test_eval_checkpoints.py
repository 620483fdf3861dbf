"""Chapter 13's helpers: every finished stage of a run evaluated side by side (LoRA runs merged), and the
rows as a Markdown table."""
import json

import pytest
from tiny_checkpoint import make_checkpoint, make_lora_run

from minimind.model import load_checkpoint
from minimind.use import eval as ev

EVAL = [
    {"id": "q1", "type": "short", "split": "heldout", "question": "Where does Mira live?", "answer": "Tallow"},
    {"id": "q2", "type": "short", "split": "arith", "question": "What is 3 plus 4?", "answer": "7"},
    {"id": "q3", "type": "mc", "split": "heldout", "question": "Where does Mira live?", "answer": "Tallow",
     "choices": ["Tallow", "Rufon"], "choice_texts": ["Mira lives in Tallow.", "Mira lives in Rufon."], "label": 0},
]


def finish(folder, stage):
    (folder / "summary.json").write_text(json.dumps({"stage": stage}))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder: pretrain and sft finished, a LoRA run on sft, an unfinished dpo, a reward model."""
    root = tmp_path_factory.mktemp("run")
    finish(make_checkpoint(root / "pretrain", seed=0), "pretrain")
    sft = finish(make_checkpoint(root / "sft", seed=1), "sft")
    make_checkpoint(root / "dpo", seed=2)                        # no summary.json: still training
    finish(make_checkpoint(root / "reward", seed=3), "reward")   # not a course stage evaluated here
    lora, _ = make_lora_run(sft, root / "lora", std=0.5)
    finish(lora, "lora")
    (root / "corpus").mkdir()
    texts = root / "corpus" / "val.jsonl"
    texts.write_text("\n".join(json.dumps({"text": f"Mira the baker lives in Tallow and likes bread {i}."})
                               for i in range(5)) + "\n")
    questions = root / "corpus" / "eval.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in EVAL) + "\n")
    return root, {"pretrain_val": texts, "eval": questions}


def test_find_checkpoints_in_course_order_finished_only(run):
    root, _ = run
    assert list(ev.find_checkpoints(root)) == ["pretrain", "sft", "lora"]
    assert list(ev.find_checkpoints(root, stages=["lora", "pretrain"])) == ["lora", "pretrain"]
    assert ev.find_checkpoints(root / "nothing") == {}


def test_evaluate_checkpoints_rows(run):
    root, paths = run
    rows = ev.evaluate_checkpoints(root, paths, device="cpu", max_new_tokens=6)
    assert [r["stage"] for r in rows] == ["pretrain", "sft", "lora"]
    for r in rows:
        assert r["perplexity"] > 1 and r["bits_per_byte"] > 0
        assert r["mc_accuracy"] in (0.0, 1.0) and r["mc_chance"] == 0.5
        assert set(r) >= {"exact_match", "em_heldout", "em_arith", "answers", "seconds", "params_M"}
        assert [a["id"] for a in r["answers"]] == ["q1", "q2"]
    # the numbers are those of the metric functions on the loaded checkpoint (the LoRA run merged)
    model, tok = load_checkpoint(root / "lora")
    want = ev.perplexity(model, tok, paths["pretrain_val"])["perplexity"]
    assert rows[2]["perplexity"] == pytest.approx(want)
    assert rows[2]["perplexity"] != pytest.approx(rows[1]["perplexity"])  # the adapter changed the model
    em = ev.exact_match_accuracy(model, tok, paths["eval"], chat=True, max_new_tokens=6)
    assert [a["output"] for a in rows[2]["answers"]] == [a["output"] for a in em["rows"]]
    base, _ = load_checkpoint(root / "pretrain")
    plain = ev.exact_match_accuracy(base, tok, paths["eval"], chat=False, max_new_tokens=6)  # base: no template
    assert [a["output"] for a in rows[0]["answers"]] == [a["output"] for a in plain["rows"]]


def test_evaluate_checkpoints_without_questions(run):
    root, paths = run
    rows = ev.evaluate_checkpoints(root, {"pretrain_val": paths["pretrain_val"]}, stages=["sft"], device="cpu")
    assert len(rows) == 1 and rows[0]["mc_accuracy"] is None and rows[0]["exact_match"] is None


def test_markdown_table():
    rows = [{"stage": "sft", "ppl": 2.34567, "acc": None, "answers": [1]}, {"stage": "a|b", "ppl": 3, "extra": 1.0}]
    assert ev.markdown_table(rows).splitlines() == [
        "| stage | ppl | acc | extra |", "| --- | --- | --- | --- |",
        "| sft | 2.346 | - | - |", "| a\\|b | 3 | - | 1.000 |"]
    assert ev.markdown_table(rows, ["stage"], digits=1) == "| stage |\n| --- |\n| sft |\n| a\\|b |"
    assert ev.markdown_table([]) == ""
    assert ev.markdown_table(rows, {"stage": "Stage", "ppl": "perplexity"}).splitlines()[:3] == [
        "| Stage | perplexity |", "| --- | --- |", "| sft | 2.346 |"]


def test_markdown_view_renders_tables_as_html():
    from minimind.course.report import MarkdownView
    view = MarkdownView("**card**\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n")
    assert view._repr_markdown_().startswith("**card**")
    html = view._repr_html_()
    assert "<strong>card</strong>" in html and "<table>" in html and "<td>2</td>" in html


def test_plot_checkpoints_one_bar_per_stage():
    import matplotlib
    matplotlib.use("Agg")
    from minimind.course.plots import plot_checkpoints
    rows = [{"stage": "pretrain", "perplexity": 2.5, "mc_accuracy": 0.9, "mc_chance": 0.25, "exact_match": 0.1},
            {"stage": "sft", "perplexity": 20.0, "mc_accuracy": 0.8, "mc_chance": 0.25, "exact_match": 0.5}]
    fig = plot_checkpoints(rows)
    assert len(fig.axes) == 3 and all(len(ax.patches) == 2 for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["pretrain", "sft"]
    fig = plot_checkpoints([{**r, "mc_accuracy": None, "exact_match": None} for r in rows])
    assert len(fig.axes) == 1  # no questions (MiniMind's datasets): perplexity alone


def test_report_table_one_row_a_chapter(tmp_path):
    from minimind.course.report import record, report_table
    record(tmp_path, "07_pretrain", val_loss=0.123456, steps=300)
    record(tmp_path, "13_eval_serve", note="a|b")
    assert report_table(tmp_path).splitlines() == [
        "| chapter | measured |", "| --- | --- |", "| 07_pretrain | val_loss **0.1235** · steps **300** |",
        "| 13_eval_serve | note **a\\|b** |"]
    assert "13_eval" not in report_table(tmp_path, exclude={"13_eval_serve"})


def test_plot_length_curve():
    import matplotlib
    matplotlib.use("Agg")
    from minimind.course.plots import plot_length_curve
    curve = {"lengths": [64, 128, 256], "original_max_position_embeddings": 128, "factor": 2.0,
             "rope": [3, 2, 5], "yarn": [3.5, 2.5, 3], "rope_tail": [3, 2, 8], "yarn_tail": [3.5, 2.5, 3.2]}
    fig = plot_length_curve(curve)
    left, right = fig.axes
    assert [line.get_label() for line in left.get_lines()] == ["RoPE", "YaRN x2", "trained length"]
    assert list(right.get_lines()[0].get_ydata()) == [3, 2, 8]


def test_read_documents_stops_at_limit(tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}\nnot json at all\n')
    assert ev.read_documents(f, limit=2) == ["a", "b"]   # never reaches the bad line
    with pytest.raises(ValueError, match="big.jsonl:5"):
        ev.read_documents(f)
