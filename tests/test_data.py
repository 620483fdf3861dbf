"""Loaders of every stage, their masks and packing, bad input, and the (offline-tested) downloader."""
import json
import shutil
import time

import numpy as np
import pytest
import torch
from course_helpers import FIXTURES, course, tokenizer

import minimind.data.download as dl
from minimind.cli import main
from minimind.data.datasets import (
    DPODataset,
    PretrainDataset,
    RLPromptDataset,
    SFTDataset,
    chat_labels,
    pad_collate,
    tokenize_pretrain,
)
from minimind.data.records import DataError, check_file, read_jsonl, to_hf_dataset

GOOD_SFT = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def _write(path, lines: list) -> str:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (line + "\n").encode())
    return str(path)


# -- bad input: each case names file and line ---------------------------------------------------------
BAD_CASES = {
    "not json": ('{"conversations": [', "not valid JSON"),
    "missing field": ('{"messages": []}', 'missing field "conversations"'),
    "unknown role": ('{"conversations": [{"role": "bot", "content": "x"}]}', "unknown role 'bot'"),
    "empty conversation": ('{"conversations": []}', "empty conversation"),
    "invalid utf-8": (b'{"conversations": "\xff\xfe"}\n', "invalid UTF-8"),
    "missing content": ('{"conversations": [{"role": "user"}]}', 'has no "content" field'),
    "no assistant turn": ('{"conversations": [{"role": "user", "content": "x"}]}', "no assistant turn"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_line_names_file_line_and_fix(tmp_path, case, capsys):
    line, message = BAD_CASES[case]
    path = _write(tmp_path / "bad.jsonl", [json.dumps(GOOD_SFT), "", line, json.dumps(GOOD_SFT)])
    with pytest.raises(DataError) as err:
        read_jsonl(path, "sft")
    assert f"{path}:3: " in str(err.value) and message in str(err.value) and "fix:" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 bad line"):
        records = read_jsonl(path, "sft", skip_bad=True)
    assert len(records) == 2 and records.bad[0][0] == 3 and message in records.bad[0][1]
    # the command line: the message, exit status 2, no traceback
    assert main(["data", "check", path, "--kind", "sft"]) == 2
    err_text = capsys.readouterr().err
    assert "bad.jsonl:3: " in err_text and message in err_text and "Traceback" not in err_text
    assert main(["data", "check", path, "--kind", "sft", "--skip-bad"]) == 2
    out = capsys.readouterr().out
    assert "bad.jsonl:3: " in out and "2 good sft records, 1 bad lines" in out


def test_kind_specific_checks(tmp_path):
    cases = [("pretrain", '{"text": 3}', "not a string"), ("pretrain", '{"text": "  "}', '"text" is empty'),
             ("dpo", '{"chosen": [{"role": "user", "content": "q"}], "rejected": []}',
              '"chosen" has no assistant turn'),
             ("dpo", '{"chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], '
                     '"rejected": []}', "does not end with an assistant"),
             ("dpo", '{"chosen": [{"role": "assistant", "content": "a"}]}', 'missing field "rejected"'),
             ("rl", '{"conversations": [{"role": "system", "content": "s"}]}', "no user turn"),
             ("eval", '{"question": "q", "answer": "a", "type": "mc", "choices": ["a", "b"], "label": 5}', "label")]
    for kind, line, message in cases:
        path = _write(tmp_path / f"{kind}.jsonl", [line])
        with pytest.raises(DataError, match=message):
            check_file(path, kind)
    with pytest.raises(DataError, match="empty"):
        read_jsonl(_write(tmp_path / "empty.jsonl", []), "sft")


# -- the MiniMind fixtures: the formats download fetches --------------------------------------------------
@pytest.mark.parametrize("name", ["pretrain_hq", "sft_mini_512", "dpo", "r1_mix_1024", "rlaif-mini", "lora_identity"])
def test_fixtures_have_minimind_formats(name):
    file, kind, _ = dl.DATASETS[name]
    summary = check_file(FIXTURES / file, kind)
    assert summary["records"] >= 2 and summary["bad"] == 0


def test_loaders_read_minimind_files():
    tok = tokenizer()
    sft = SFTDataset(FIXTURES / "sft_mini_512.jsonl", tok, max_len=512)
    assert len(sft) == 3 and sft.stats["dropped_no_target"] == 0
    assert len(DPODataset(FIXTURES / "dpo.jsonl", tok, max_len=512)) == 2
    rl = RLPromptDataset(FIXTURES / "rlaif-mini.jsonl", tok)
    assert rl[0]["prompt"] == "<|im_start|>user\n列举三种常见的水果。<|im_end|>\n<|im_start|>assistant\n"
    assert rl[0]["answer"] == "" and tok.decode(rl[0]["prompt_ids"]) == rl[0]["prompt"]
    assert len(to_hf_dataset(FIXTURES / "lora_identity.jsonl", "sft")) == 2


# -- downloads, without a network --------------------------------------------------------------------------
def test_download_offline_fails_at_once_with_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(dl, "_hub_download", lambda *a, **k: pytest.fail("the hub must not be called offline"))
    start = time.perf_counter()
    with pytest.raises(dl.DownloadError) as err:
        dl.download_dataset("sft_mini_512", tmp_path / "mm")
    assert time.perf_counter() - start < 1
    msg = str(err.value)
    assert "sft_mini_512.jsonl" in msg and str(tmp_path / "mm" / "sft_mini_512.jsonl") in msg
    assert "jingyaogong/minimind_dataset" in msg and "HF_HUB_OFFLINE" in msg
    assert main(["data", "download", "pretrain_hq", "--out", str(tmp_path)]) == 2
    err_text = capsys.readouterr().err
    assert "pretrain_hq.jsonl" in err_text and "Traceback" not in err_text


def test_download_fetches_checks_and_keeps(tmp_path, monkeypatch):
    calls = []

    def fake_hub(repo_id, filename, local_dir, revision=None, force=False):
        calls.append((repo_id, filename))
        shutil.copy(FIXTURES / filename, local_dir / filename)
        return str(local_dir / filename)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "_offline_reason", lambda: None)
    monkeypatch.setattr(dl, "_hub_download", fake_hub)
    path = dl.download_dataset("dpo", tmp_path)
    assert path == tmp_path / "dpo.jsonl" and calls == [("jingyaogong/minimind_dataset", "dpo.jsonl")]
    assert dl.download_dataset("dpo.jsonl", tmp_path) == path and len(calls) == 1  # kept, not fetched again
    with pytest.raises(ValueError, match="unknown dataset 'sft_9000'"):
        dl.download_dataset("sft_9000", tmp_path)


def test_download_hub_error_becomes_a_clear_message(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("connection reset")
    monkeypatch.setattr(dl, "_offline_reason", lambda: None)
    monkeypatch.setattr(dl, "_hub_download", broken)
    with pytest.raises(dl.DownloadError, match="connection reset") as err:
        dl.download_dataset("r1_mix_1024", tmp_path)
    assert "r1_mix_1024.jsonl" in str(err.value) and not (tmp_path / "r1_mix_1024.jsonl").exists()


# -- SFT masks ---------------------------------------------------------------------------------------------
def test_sft_labels_cover_exactly_the_assistant_spans():
    tok = tokenizer()
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Where does Mira live?"},
            {"role": "assistant", "content": "Mira lives in Lumo."}, {"role": "user", "content": "And 2 plus 3?"},
            {"role": "assistant", "content": "2 plus 3 is 5."}]
    ids, labels = chat_labels(tok, msgs)
    # by hand: the pieces of the template, each tokenized on its own
    e = tok.encode
    pieces = [(e("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nWhere does Mira live?<|im_end|>\n"
                 "<|im_start|>assistant\n"), False), (e("Mira lives in Lumo.<|im_end|>"), True),
              (e("\n<|im_start|>user\nAnd 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"), False),
              (e("2 plus 3 is 5.<|im_end|>"), True), (e("\n"), False)]
    assert ids == [i for p, _ in pieces for i in p]
    assert labels == [i if keep else -100 for p, keep in pieces for i in p]
    kept = [i for i in labels if i != -100]
    assert tok.decode(kept) == "Mira lives in Lumo.<|im_end|>2 plus 3 is 5.<|im_end|>"
    item = SFTDataset([{"conversations": msgs}], tok, max_len=512)[0]
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels


def test_sft_truncation_never_hides_an_empty_sample():
    tok = tokenizer()
    long_q = {"role": "user", "content": "word " * 200}
    samples = [{"conversations": [long_q, {"role": "assistant", "content": "Yes."}]},
               {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello " * 50}]}]
    with pytest.warns(UserWarning, match="dropped 1 of 2 samples"):
        ds = SFTDataset(samples, tok, max_len=32)
    assert len(ds) == 1 and ds.stats["truncated"] == 2 and ds.stats["dropped_no_target"] == 1
    assert len(ds[0]["input_ids"]) == 32 and (ds[0]["labels"] != -100).any()
    with pytest.raises(DataError, match="raise max_len"), pytest.warns(UserWarning):
        SFTDataset(samples[:1], tok, max_len=32)


def test_dpo_items_and_their_masks():
    tok = tokenizer()
    ds = DPODataset(course()["dpo"], tok, max_len=256)
    batch = pad_collate([ds[0], ds[1], ds[2]])
    for side in ("chosen", "rejected"):
        ids, labels, mask = batch[f"{side}_input_ids"], batch[f"{side}_labels"], batch[f"{side}_attention_mask"]
        assert ids.shape == labels.shape == mask.shape
        assert ((labels != -100) <= (mask == 1)).all() and (ids[mask == 0] == 0).all()
        for row in range(3):
            kept = labels[row][labels[row] != -100].tolist()
            assert tok.decode(kept).endswith("<|im_end|>") and kept[-1] == tok.eos_token_id
    first = read_jsonl(course()["dpo"], "dpo")[0]
    chosen = ds[0]["chosen_labels"]
    assert tok.decode(chosen[chosen != -100]) == first["chosen"][-1]["content"] + "<|im_end|>"


def test_rl_prompts_end_with_the_generation_prompt():
    tok = tokenizer()
    ds = RLPromptDataset(course()["rl"], tok)
    records = read_jsonl(course()["rl"], "rl")
    assert len(ds) == len(records)
    for i in range(5):
        item = ds[i]
        assert item["prompt"].endswith("<|im_start|>assistant\n") and item["answer"] == str(records[i]["answer"])
        assert item["prompt_ids"].tolist() == tok.encode(item["prompt"])
    batch = pad_collate([ds[0], ds[1]], padding_side="left")
    assert batch["prompt_ids"][:, -1].tolist() == tok.encode("\n")[-1:] * 2 and batch["answer"] == [ds[0]["answer"],
                                                                                                      ds[1]["answer"]]


def test_pad_collate_pads_ids_labels_and_masks():
    batch = pad_collate([dict(input_ids=torch.tensor([5, 6, 7]), labels=torch.tensor([-100, 6, 7])),
                         dict(input_ids=torch.tensor([8]), labels=torch.tensor([8]))], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_collate([dict(input_ids=torch.tensor([5, 6])), dict(input_ids=torch.tensor([8]))], pad_id=9,
                       padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6], [9, 8]] and left["attention_mask"].tolist() == [[1, 1], [0, 1]]


# -- pretraining: one token file, packed windows -------------------------------------------------------------
def test_packed_windows_tile_the_token_stream(tmp_path):
    tok, paths = tokenizer(), course()
    tokens = tokenize_pretrain(paths["pretrain"], tok, tmp_path / "pretrain.bin")
    docs = read_jsonl(paths["pretrain"], "pretrain")
    meta = json.loads((tmp_path / "pretrain.bin.json").read_text())
    assert tokens.dtype == np.uint16 and meta["tokens"] == len(tokens) and meta["documents"] == len(docs)
    assert len(tokens) == sum(len(tok.encode(d["text"])) + 2 for d in docs)
    assert int((tokens == tok.bos_token_id).sum()) == int((tokens == tok.eos_token_id).sum()) == len(docs)
    assert tokens[:len(tok.encode(docs[0]["text"])) + 2].tolist() == [1] + tok.encode(docs[0]["text"]) + [2]
    seq = 64
    ds = PretrainDataset(tmp_path / "pretrain.bin", seq)
    assert len(ds) == len(tokens) // seq and ds.padding_fraction == 0.0
    stream = torch.cat([ds[i]["input_ids"] for i in range(len(ds))])
    assert stream.tolist() == tokens[:len(ds) * seq].tolist() and len(tokens) - len(stream) < seq
    assert all(torch.equal(ds[i]["input_ids"], ds[i]["labels"]) for i in range(3))
    assert list(tmp_path.glob(".*tmp")) == []


def test_tokenize_pretrain_bad_line_leaves_no_file(tmp_path):
    path = _write(tmp_path / "p.jsonl", ['{"text": "good"}', '{"txt": "bad"}'])
    with pytest.raises(DataError, match=r"p\.jsonl:2: missing field \"text\""):
        tokenize_pretrain(path, tokenizer(), tmp_path / "p.bin")
    assert list(tmp_path.glob("p.bin*")) == [] and list(tmp_path.glob(".*tmp")) == []
    tokens = tokenize_pretrain(path, tokenizer(), tmp_path / "p.bin", skip_bad=True)
    assert tokens.tolist() == [1] + tokenizer().encode("good") + [2]
