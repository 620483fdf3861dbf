"""The training loop: it learns, resumes exactly, survives interrupted writes, and DDP equals one process."""
import json
import os
import re
import socket

import pytest
import torch
from conftest import random_model, small_config

from minimind import MiniMindForCausalLM
from minimind.model.lora import load_adapter, lora_state_dict, merge_lora
from minimind.train.loop import TrainArgs, lr_at, read_metrics, train
from minimind.train.stages import DistillStage, LoRAStage, PretrainStage, ReasonStage, distillation_loss
from minimind.train.state import find_resume_state


def stack_collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def toy_data(n=32, seq=16, seed=0, vocab=97):
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randint(3, vocab, (4, seq), generator=g)  # a few sequences to memorise
    return [{"input_ids": pattern[i % 4], "labels": pattern[i % 4]} for i in range(n)]


def fresh_model(seed=0, **kw):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(small_config(**kw))


ARGS = dict(batch_size=4, lr=3e-3, log_every=1, progress=False, device="cpu", warmup_steps=2)


def test_loss_decreases_on_tiny_overfit(tmp_path):
    model = fresh_model()
    summary = train(model, PretrainStage(), toy_data(), TrainArgs(max_steps=30, **ARGS), tmp_path,
                    collate_fn=stack_collate)
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 4 * 16
    again = MiniMindForCausalLM.from_pretrained(tmp_path)  # the run folder is a checkpoint
    assert torch.equal(again.lm_head.weight, model.lm_head.weight.cpu())


def test_moe_logs_cross_entropy_and_balancing_loss_apart(tmp_path):
    model = fresh_model(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)
    train(model, PretrainStage(), toy_data(), TrainArgs(max_steps=3, **ARGS), tmp_path, collate_fn=stack_collate)
    for r in read_metrics(tmp_path):
        assert r["aux"] > 0 and r["ce"] < r["loss"]
        assert r["ce"] + r["aux"] == pytest.approx(r["loss"], rel=1e-5)


def test_schedule_warms_up_then_decays():
    args = TrainArgs(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [lr_at(s, 20, args) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] > 0.1 - 1e-9


@pytest.mark.parametrize("moe", [False, True])
def test_resume_is_bit_exact(tmp_path, moe):
    kw = dict(use_moe=True) if moe else {}
    args = dict(max_steps=8, grad_accum=2, **ARGS)
    straight = fresh_model(**kw)
    train(straight, PretrainStage(), toy_data(), TrainArgs(**args), tmp_path / "a", collate_fn=stack_collate)
    first = fresh_model(**kw)
    train(first, PretrainStage(), toy_data(), TrainArgs(stop_at=4, **args), tmp_path / "b",
          collate_fn=stack_collate)
    assert json.loads((tmp_path / "b" / "resume" / "state.json").read_text())["trainer"]["step"] == 4
    resumed = fresh_model(seed=123, **kw)  # different init: everything must come from the checkpoint
    train(resumed, PretrainStage(), toy_data(), TrainArgs(**args), tmp_path / "b", collate_fn=stack_collate,
          resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "a")]
    losses_b = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert losses_a == losses_b


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    model = fresh_model()
    train(model, PretrainStage(), toy_data(), TrainArgs(max_steps=2, **ARGS), tmp_path, collate_fn=stack_collate)
    before = MiniMindForCausalLM.from_pretrained(tmp_path).state_dict()
    import safetensors.torch as st
    real = st.save_file
    calls = {"n": 0}

    def dying_save(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # the model file went through, then the process "dies"
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise KeyboardInterrupt("killed mid-write")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(st, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(seed=5), PretrainStage(), toy_data(), TrainArgs(max_steps=2, **ARGS), tmp_path,
              collate_fn=stack_collate)
    monkeypatch.setattr(st, "save_file", real)
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path).state_dict()  # still a whole checkpoint
    assert loaded.keys() == before.keys()
    state = find_resume_state(tmp_path)
    assert state is not None and json.loads((state / "state.json").read_text())["trainer"]["step"] == 2
    assert not any(p.name.endswith(".tmp") and p.is_file() for p in tmp_path.iterdir())


def test_lora_trains_adapters_only_and_merges_exactly(tmp_path):
    model = random_model(small_config())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    stage = LoRAStage(lora_rank=4, lora_alpha=8)
    train(model, stage, toy_data(), TrainArgs(max_steps=5, **ARGS), tmp_path, collate_fn=stack_collate)
    for k, v in model.state_dict().items():  # the base did not move
        if "lora_" not in k:
            assert torch.equal(v, base[k.replace(".base.", ".")]), k
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.5 * sum(p.numel() for p in model.parameters())
    assert any(v.abs().sum() > 0 for k, v in lora_state_dict(model).items() if "lora_B" in k)
    assert (tmp_path / "adapter.safetensors").exists() and not (tmp_path / "model.safetensors").exists()
    x = torch.randint(0, 97, (2, 12))
    model.eval()
    with torch.no_grad():
        unmerged = model(x).logits
        reloaded = load_adapter(random_model(small_config()), tmp_path).eval()
        torch.testing.assert_close(reloaded(x).logits, unmerged)
        merged = merge_lora(model)
        assert not any("lora" in k for k in merged.state_dict())
        torch.testing.assert_close(merged(x).logits, unmerged, rtol=1e-5, atol=1e-5)


def test_distillation_loss_limits():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :3] = -100
    loss, ce, kl = distillation_loss(s, t, labels, alpha=1.0)
    ref = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref)
    loss, _, kl = distillation_loss(s, s.clone(), labels, alpha=0.0, temperature=2.0)
    assert abs(loss.item()) < 1e-6
    loss, _, kl = distillation_loss(s, t, labels, alpha=0.0, temperature=2.0)
    assert kl.item() > 0


def test_distill_stage_pulls_student_to_teacher(tmp_path):
    teacher = random_model(small_config(hidden_size=96, intermediate_size=128), seed=7)
    student = fresh_model()
    stage = DistillStage(teacher, alpha=0.0, temperature=1.0)
    train(student, stage, toy_data(), TrainArgs(max_steps=15, **ARGS), tmp_path, collate_fn=stack_collate)
    kls = [r["kl"] for r in read_metrics(tmp_path)]
    assert kls[-1] < kls[0]


def test_reason_stage_weights_tag_tokens():
    model = random_model(small_config())
    batch = toy_data(n=2)
    batch = stack_collate(batch)
    plain, _ = ReasonStage().loss(model, batch)
    same, _ = ReasonStage(tag_token_ids=[], tag_weight=10).loss(model, batch)
    torch.testing.assert_close(plain, same)
    tag = int(batch["labels"][0, 5])
    weighted, m = ReasonStage(tag_token_ids=[tag], tag_weight=10).loss(model, batch)
    assert m["tag_fraction"] > 0 and not torch.isclose(weighted, plain)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = fresh_model()
    train(model, PretrainStage(), toy_data(), TrainArgs(max_steps=4, **{**ARGS, "batch_size": 2, **FP32}), out,
          collate_fn=stack_collate)
    torch.distributed.destroy_process_group()


FP32 = {"dtype": "float32"}  # the invariant is exact: bf16 kernels may round half batches differently


@pytest.mark.slow
def test_ddp_gloo_equals_single_process(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2)
    single = fresh_model()
    train(single, PretrainStage(), toy_data(), TrainArgs(max_steps=4, **ARGS, **FP32), tmp_path / "one",
          collate_fn=stack_collate)
    ddp = [r["loss"] for r in read_metrics(tmp_path / "ddp")]
    one = [r["loss"] for r in read_metrics(tmp_path / "one")]
    assert len(ddp) == len(one) == 4
    for a, b in zip(ddp, one):
        assert a == pytest.approx(b, rel=1e-5)
    ddp_model = MiniMindForCausalLM.from_pretrained(tmp_path / "ddp")
    for a, b in zip(ddp_model.state_dict().values(), single.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- the loader: length-grouped batches, padding in the metrics ------------------------------------------------
def _batches(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_length_grouped_batches_cover_the_data_and_cut_padding():
    from minimind.train.loop import ResumableBatchSampler
    lengths = torch.randint(8, 512, (1000,), generator=torch.Generator().manual_seed(0))
    plain = ResumableBatchSampler(1000, 8, seed=1)
    grouped = ResumableBatchSampler(1000, 8, seed=1, lengths=lengths, group=16)
    epoch = _batches(grouped, grouped.per_epoch)
    seen = [i for b in epoch for i in b]
    assert len(seen) == len(set(seen)) == grouped.per_epoch * 8  # each sample once an epoch

    def padding(batches):  # the share of padded positions when each batch is padded to its longest sample
        return sum(len(b) * max(lengths[b]) - sum(lengths[b]) for b in batches) / sum(len(b) * max(lengths[b])
                                                                                       for b in batches)
    assert padding(epoch) < 0.1 < 0.3 < padding(_batches(plain, plain.per_epoch))
    assert epoch != sorted(epoch, key=lambda b: -max(lengths[b]))  # the batches themselves stay shuffled


def test_length_grouped_batches_resume_where_they_stopped():
    from minimind.train.loop import ResumableBatchSampler
    lengths = torch.randint(1, 100, (300,), generator=torch.Generator().manual_seed(0))
    whole = _batches(ResumableBatchSampler(300, 4, seed=3, lengths=lengths), 100)  # 75 a epoch: crosses one
    resumed = _batches(ResumableBatchSampler(300, 4, seed=3, lengths=lengths, consumed=60), 40)
    assert resumed == whole[60:]
    # two processes see what one sees with the whole batch (contiguous halves of each global batch)
    ranks = [_batches(ResumableBatchSampler(300, 2, seed=3, rank=r, world=2, lengths=lengths), 10) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == whole[:10]


def test_chat_training_logs_its_padding(tmp_path):
    from course_helpers import course

    from minimind.train import read_metrics, train_stage
    paths = course()
    for grouped in (False, True):
        train_stage("sft", tmp_path / str(grouped), data=paths["sft"], tokenizer=paths["tokenizer"], max_steps=4,
                    batch_size=8, log_every=1, device="cpu", progress=False, group_by_length=grouped)
    fractions = {g: [r["padding_fraction"] for r in read_metrics(tmp_path / str(g))] for g in (False, True)}
    assert all(0 <= f < 1 for f in fractions[False] + fractions[True])
    assert sum(fractions[True]) < sum(fractions[False])  # similar lengths together: less padding


def test_progress_lines_in_a_notebook_say_the_step_the_rate_and_the_time_left(tmp_path, capsys):
    """Outside a terminal (a notebook, a log) the loop prints about ten lines, each with its time left."""
    model = fresh_model()
    train(model, PretrainStage(), toy_data(), TrainArgs(max_steps=10, **{**ARGS, "progress": True, "log_every": 1}),
          tmp_path, collate_fn=stack_collate)
    lines = [x for x in capsys.readouterr().out.splitlines() if " step " in x]
    assert len(lines) == 10 and lines[-1].startswith("pretrain step 10/10")
    assert all(re.search(r"tok/s  \d+ s, \d+ s left$", x) for x in lines), lines
    assert lines[-1].endswith(" 0 s left")
