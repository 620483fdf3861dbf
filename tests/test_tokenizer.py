"""The tokenizer: MiniMind's special ids, lossless round trips, and one chat template in two implementations."""
import pytest
import transformers
from course_helpers import FIXTURES, course, tokenizer

from minimind.cli import main
from minimind.data.records import iter_texts, read_jsonl
from minimind.data.tokenizer import MiniMindTokenizer, bytes_per_token, render_chat, train_tokenizer


def test_special_tokens_have_minimind_ids():
    tok = tokenizer()
    assert [tok.id_to_token(i) for i in range(5)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>",
                                                       "</think>"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.im_start_id, tok.im_end_id) == (0, 1, 2, 1, 2)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|><think>x</think>")
    assert ids[0] == 1 and 2 in ids and 3 in ids and 4 in ids
    # <think> is an added token but not special: decoding without special tokens keeps it
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi<think>x</think>"


@pytest.mark.parametrize("size", ["mini", pytest.param("small", marks=pytest.mark.slow)])
def test_round_trip_on_every_corpus_line(size):
    tok, paths = tokenizer(size), course(size)
    texts = [t for name in ("pretrain", "pretrain_val", "sft", "sft_val", "lora", "dpo", "dpo_val", "rl",
                            "rl_val", "reason", "eval") for t in iter_texts(paths[name])]
    assert len(texts) > (20_000 if size == "small" else 1000)
    decoded = tok.decode_batch(tok.encode_batch(texts))
    bad = [t for t, d in zip(texts, decoded) if d != t]
    assert not bad, bad[:3]


def test_round_trip_on_text_it_never_saw():
    tok = tokenizer()
    for text in ["中国古代的四大发明", "naïve café 🙂 tab\tnew\nline", "  leading spaces", "x" * 300, "\x00\x7f"]:
        assert tok.decode(tok.encode(text)) == text


def _conversations():
    paths = course("small")
    convs = [r["conversations"] for r in read_jsonl(paths["sft"])[:30]]
    convs += [r["conversations"] for r in read_jsonl(paths["reason"])[:10]]
    convs += [r["chosen"] for r in read_jsonl(paths["dpo"])[:10]]
    convs.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 plus 2?"},
                  {"role": "assistant", "content": "4.", "reasoning_content": "2 plus 2 is 4."},
                  {"role": "user", "content": "名字?"}])
    return convs


def test_chat_template_equals_transformers(tmp_path):
    tok = tokenizer("small")
    tok.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    checked = 0
    for conv in _conversations():
        for gen in (False, True):
            for think in (None, True, False):
                kw = {} if think is None else {"enable_thinking": think}
                text = tok.apply_chat_template(conv, add_generation_prompt=gen, **kw)
                assert hf.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False, **kw) == text
                ids = hf.apply_chat_template(conv, add_generation_prompt=gen, tokenize=True, **kw)
                ids = ids["input_ids"] if hasattr(ids, "keys") else ids
                assert list(ids) == tok.apply_chat_template(conv, add_generation_prompt=gen, tokenize=True, **kw)
                assert list(hf.encode(text, add_special_tokens=False)) == tok.encode(text)
                checked += 1
    assert checked == 6 * len(_conversations())


def test_chat_template_text():
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert render_chat(msgs) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    assert render_chat(msgs[:1], add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(msgs[:1], True, enable_thinking=False).endswith("assistant\n<think>\n\n</think>\n\n")
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        render_chat([{"role": "tool", "content": "x"}])


def test_bytes_per_token_counts_bytes_not_characters():
    tok = tokenizer()
    texts = ["Lumo", "héllo 中"]
    n_tokens = sum(len(tok.encode(t)) for t in texts)
    assert bytes_per_token(tok, texts) == pytest.approx((4 + 10) / n_tokens)  # é: 2 bytes, 中: 3


def test_larger_vocabulary_carries_more_bytes_per_token():
    paths = course("mini")
    texts = list(iter_texts(paths["pretrain"]))
    held = list(iter_texts(paths["pretrain_val"]))
    small, large = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=1000)
    assert small.vocab_size == 300 and 300 < large.vocab_size <= 1000
    assert len(small.merges()) == 300 - 261 and small.merges()[0] == large.merges()[0]
    assert 1.0 < bytes_per_token(small, held) < bytes_per_token(large, held)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(texts, vocab_size=100)


def test_missing_tokenizer_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="minimind tokenizer train"):
        MiniMindTokenizer.from_pretrained(tmp_path)


def test_cli_trains_on_any_format_and_reports_bytes_per_token(tmp_path, capsys):
    files = sorted(str(p) for p in FIXTURES.glob("*.jsonl"))
    plain = tmp_path / "notes.txt"
    plain.write_text("A plain text file.\n\nWith two paragraphs, 中文 too.\n", encoding="utf-8")
    assert main(["tokenizer", "train", "--data", *files, str(plain), "--vocab-size", "400", "--out",
                 str(tmp_path / "tok"), "--held-out", str(plain)]) == 0
    out = capsys.readouterr().out
    assert "bytes per token on 2 held-out texts" in out
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    tok = MiniMindTokenizer.from_pretrained(tmp_path / "tok")
    text = "四大发明 is a fixture phrase"
    assert list(hf.encode(text, add_special_tokens=False)) == tok.encode(text)
    assert tok.decode(tok.encode(text)) == text
