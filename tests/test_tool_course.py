"""Chapter 14's pieces: the extended tokenizer, the grown embedding, and task success on tool tasks."""
import json

import pytest
import torch
from course_helpers import course, tokenizer

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.data.datasets import render_record
from minimind.data.records import iter_texts, read_jsonl
from minimind.data.tokenizer import MiniMindTokenizer, extend_tokenizer
from minimind.model.tools import course_tools


@pytest.fixture(scope="module")
def extended():
    paths, tok = course("mini"), tokenizer("mini")
    texts = [render_record(r["conversations"], "minimind3")[0] for r in read_jsonl(paths["tool_sft"], "sft")]
    return tok, extend_tokenizer(tok, texts, new_merges=60), texts


def test_extension_keeps_every_old_id_and_the_old_split(extended):
    old, new, texts = extended
    old_vocab, new_vocab = old.tokenizer.get_vocab(), new.tokenizer.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())  # every old token keeps its id
    assert sorted(new_vocab.values()) == list(range(new.vocab_size))  # the new ones follow, without gaps
    assert new.vocab_size > old.vocab_size + 4
    docs = list(iter_texts([course("mini")["pretrain_val"], course("mini")["sft_val"]]))
    assert sum(old.encode(d) == new.encode(d) for d in docs) == len(docs)  # the old text splits as before
    assert all(new.decode(new.encode(t)) == t for t in texts[:50])
    assert sum(map(len, map(new.encode, texts))) < 0.7 * sum(map(len, map(old.encode, texts)))


def test_tags_are_tokens_and_whitespace_stays_split(extended):
    old, new, _ = extended
    for tag in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"):
        assert len(new.encode(tag)) == 1 and len(old.encode(tag)) > 1
    assert new.template == "minimind3"
    # a generation prompt's end splits like the same text before an answer (no merged "\n\n")
    prompt_end = new.encode("</think>\n\n")
    assert new.encode("</think>\n\nMira")[:len(prompt_end)] == prompt_end
    assert not [t for t in new.tokenizer.get_vocab() if len(t) > 1 and not t.strip("ĠĊĉčċČ")]


def test_the_extended_tokenizer_saves_and_loads_with_its_template(extended, tmp_path):
    _, new, texts = extended
    new.save_pretrained(tmp_path)
    again = MiniMindTokenizer.from_pretrained(tmp_path)
    assert again.template == "minimind3" and again.encode(texts[0]) == new.encode(texts[0])


@pytest.mark.parametrize("tied", [True, False])
def test_a_grown_embedding_keeps_the_old_logits_and_starts_new_rows_at_the_mean(tied):
    torch.manual_seed(0)
    config = MiniMindConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, intermediate_size=64, tie_word_embeddings=tied)
    model = MiniMindForCausalLM(config).eval()
    ids = torch.randint(0, 50, (2, 7))
    before = model(ids).logits
    old_embed = model.model.embed_tokens.weight.detach().clone()
    model.resize_token_embeddings(60)
    after = model(ids).logits
    assert after.shape == (2, 7, 60) and model.config.vocab_size == 60
    torch.testing.assert_close(after[..., :50], before)
    torch.testing.assert_close(model.model.embed_tokens.weight[50:], old_embed.mean(0).expand(10, -1))
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    with pytest.raises(ValueError, match="shrinking"):
        model.resize_token_embeddings(40)


class AnsweringModel:
    """A stand-in policy that calls the tool the task needs, then copies the result (a perfect tool user)."""

    def __init__(self, tok, script):
        self.tok, self.script, self.device = tok, script, torch.device("cpu")
        self.config = MiniMindConfig(vocab_size=tok.vocab_size, max_position_embeddings=8192)

    def generate(self, ids, max_new_tokens, attention_mask=None, shared_prefix=None, **kw):
        rows = []
        prefix = shared_prefix[0].tolist() if shared_prefix is not None else []  # the tools block, run once
        for row, mask in zip(ids, attention_mask):
            text = self.tok.decode(prefix + row[mask.bool()].tolist())
            rows.append(self.tok.encode(self.script(text)) + [self.tok.eos_token_id])
        width = max(map(len, rows))
        return torch.cat([ids, torch.tensor([r + [self.tok.eos_token_id] * (width - len(r)) for r in rows])], 1)


def test_task_success_runs_the_episodes_and_counts_by_kind(extended):
    from minimind.use.eval import tool_task_accuracy
    _, new, _ = extended
    paths = course("mini")
    registry = json.loads(paths["registry"].read_text())
    box = course_tools(registry["people"])
    tasks = list(read_jsonl(paths["tool_eval"], "rl"))

    def script(text):  # a lookup task's right call first; after a result (or for a sum), the right answer
        question = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        task = next(t for t in tasks if t["conversations"][-1]["content"] == question)
        if task["kind"] == "lookup" and "<tool_response>" not in text:
            name = next(n for n in registry["people"] if n in question)
            fact = next(f for f in ("house", "weight", "shoe") if str(registry["people"][name][f]) == task["answer"])
            call = json.dumps({"name": "lookup", "arguments": {"name": name, "fact": fact}})
            return f"<tool_call>\n{call}\n</tool_call>"
        return f"The answer is {task['answer']}."

    result = tool_task_accuracy(AnsweringModel(new, script), new, tasks, box, max_turns=3)
    assert result["n"] == len(tasks) and set(result["by_kind"]) == {"lookup", "sum", "later"}
    assert result["accuracy"] == 1.0
    lookups = [e for e, t in zip(result["episodes"], tasks) if t["kind"] == "lookup"]
    assert all(e[0]["tool_calls"][0]["name"] == "lookup" and e[1]["role"] == "tool" for e in lookups)
    assert all(t["answer"] in e[1]["content"] for e, t in zip(lookups, [t for t in tasks if t["kind"] == "lookup"]))

