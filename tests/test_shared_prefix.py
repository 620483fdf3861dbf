"""SFT with a shared prompt run once per batch (SFTStage's shared_prefix): the same loss and gradients as running
every row whole, in float32, under bf16 autocast and compiled; and the prefix never hides a learned token."""
import contextlib

import pytest
import torch
from conftest import random_model, small_config
from course_helpers import course

from minimind.data.datasets import IGNORE_INDEX
from minimind.model import fast
from minimind.model.attention import KVCache
from minimind.train import load_tokenizer, read_metrics, train_stage
from minimind.train.stages import common_prefix, length_buckets, shared_length, shared_prefix_loss

PROMPT, LEARN_FROM = 40, 45  # rows 0, 1, 3, 4 open with the same 40 tokens and learn from position 45


def batch(seed=0, b=5, t=64):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (b, t), generator=g)
    ids[[0, 1, 3, 4], :PROMPT] = ids[0, :PROMPT]  # the shared prompt; row 2 is another conversation
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, LEARN_FROM:] = ids[:, LEARN_FROM:]
    labels[2, 10:] = ids[2, 10:]
    ids[1, 58:], labels[1, 58:] = 0, IGNORE_INDEX  # right padding, as the SFT collate writes it
    return ids, labels


def plain_loss(model, ids, labels):
    return model(ids, labels=labels).loss


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_prefix_is_the_shared_prompt_and_stops_before_a_learned_token():
    ids, labels = batch()
    assert common_prefix(ids, labels) == ([0, 1, 3, 4], PROMPT)
    early = labels.clone()
    early[3, 36:] = ids[3, 36:]  # a row that learns inside the prompt: the prefix stops before it
    assert common_prefix(ids, early) == ([0, 1, 3, 4], 35)
    assert common_prefix(ids, labels, min_len=41) == ([], 0)  # no 41 tokens shared
    assert shared_prefix_loss(random_model(small_config()), ids[[0, 2]], labels[[0, 2]]) is None  # one row each


def test_loss_and_gradients_equal_the_plain_forward():
    model = random_model(small_config()).train()
    ids, labels = batch()
    plain = plain_loss(model, ids, labels)
    g_plain = grads(model, plain)
    shared, _ = shared_prefix_loss(model, ids, labels)
    assert shared.item() == pytest.approx(plain.item(), rel=1e-5)
    g_shared = grads(model, shared)
    assert g_shared.keys() == g_plain.keys()
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("formula", ["fast", "plain"])  # plain: as under torch.compile, a mean over no token is NaN
def test_rows_that_learn_nothing_leave_the_loss_finite(formula):
    model = random_model(small_config()).train()
    ids, labels = batch()
    labels[2] = IGNORE_INDEX  # the one row outside the shared prompt learns nothing (truncated before its answer)
    with fast.plain("loss") if formula == "plain" else contextlib.nullcontext():
        shared, _ = shared_prefix_loss(model, ids, labels)
        plain = plain_loss(model, ids, labels)
    assert torch.isfinite(shared) and shared.item() == pytest.approx(plain.item(), rel=1e-5)


def test_a_moe_model_learns_from_the_same_tokens():
    # the balance loss sees the prompt's tokens once instead of once per row; the cross-entropy is the same
    model = random_model(small_config(use_moe=True, n_routed_experts=4, num_experts_per_tok=2)).train()
    ids, labels = batch()
    _, metrics = shared_prefix_loss(model, ids, labels)
    assert metrics["ce"].item() == pytest.approx(model(ids, labels=labels).ce.item(), rel=1e-5)
    assert metrics["aux"] > 0


def test_under_bf16_autocast_and_compiled():
    model = random_model(small_config()).train()
    ids, labels = batch(1)
    plain = plain_loss(model, ids, labels).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = shared_prefix_loss(model, ids, labels)[0]
    assert torch.isfinite(half) and half.item() == pytest.approx(plain, rel=0.03)
    compiled = torch.compile(model)
    assert shared_prefix_loss(compiled, ids, labels)[0].item() == pytest.approx(plain, rel=1e-4)


def test_an_expanded_cache_is_a_view_until_a_row_appends():
    cache = KVCache(1)
    k = torch.randn(1, 2, 5, 4)
    cache.update(0, k, k)
    wide = cache.expand(3)
    assert len(wide) == 5 and wide.keys[0].shape == (3, 2, 5, 4) and wide.keys[0].data_ptr() == cache.keys[0].data_ptr()
    new = torch.randn(3, 2, 1, 4)
    keys, _ = wide.update(0, new, new)
    assert torch.equal(keys[:, :, :5], k.expand(3, -1, -1, -1)) and torch.equal(keys[:, :, 5:], new)
    assert len(cache) == 5  # the one-row cache is untouched


def test_a_tool_sft_run_trains_the_same_with_the_prompt_shared(tmp_path):
    from minimind.data import read_jsonl
    from minimind.data.datasets import render_record
    from minimind.data.tokenizer import extend_tokenizer
    paths = course()
    texts = [render_record(r["conversations"], "minimind3")[0] for r in read_jsonl(paths["tool_sft"], "sft")]
    tok = extend_tokenizer(load_tokenizer(paths["tokenizer"]), texts[:200], new_merges=50, template="minimind3")
    runs = {}
    for shared in (False, True):
        out = tmp_path / f"shared_{shared}"
        train_stage("sft", out, data=paths["tool_sft"], tokenizer=tok, preset="tiny", max_steps=3, batch_size=4,
                    seq_len=512, device="cpu", progress=False, log_every=1, seed=0,
                    stage_kwargs=dict(shared_prefix=shared))
        runs[shared] = [r["loss"] for r in read_metrics(out)]
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_rows_run_in_groups_of_similar_length():
    # padded cost: one group 4 x 101 = 404; two groups 2 x 12 + 2 x 101 = 226, worth a second forward of 5
    assert length_buckets([100, 12, 10, 101], overhead=5) == [[2, 1], [0, 3]]
    assert length_buckets([100, 12, 10, 101], overhead=1000) == [[2, 1, 0, 3]]
    assert length_buckets([7], overhead=5) == [[0]]
    assert shared_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_length([[1, 2], [1, 2]]) == 1  # each keeps a token of its own
