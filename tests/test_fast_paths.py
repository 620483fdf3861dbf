"""The hand-written fast path (loss.py's chunked loss) against the plain formula that autograd differentiates:
same values, same gradients. And the plain formulas that replaced the removed fast paths (RMSNorm's and
RoPE's hand-written backward passes): Llama's numbers, with gradients too, and bf16 autocast trains."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_model, small_config

from minimind.model import fast
from minimind.model.layers import RMSNorm
from minimind.model.loss import chunk_rows, linear_cross_entropy
from minimind.model.rope import apply_rope, rope_cos_sin, rope_inv_freq

MOE = dict(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)


# -- linear_cross_entropy --------------------------------------------------------------------------
@pytest.mark.parametrize("rows_per_chunk", [1, 7, 64, 10_000])
def test_linear_cross_entropy_equals_cross_entropy_of_the_logits(rows_per_chunk):
    torch.manual_seed(0)
    hidden = torch.randn(3, 20, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 20))
    targets[0, :5] = -100  # a prompt, not learned
    targets[:, -1] = -100
    ref = F.cross_entropy(F.linear(hidden, weight).flatten(0, 1), targets.reshape(-1), ignore_index=-100)
    ours = linear_cross_entropy(hidden, weight, targets, rows_per_chunk=rows_per_chunk)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    # a scaled loss (gradient accumulation divides it) scales the gradients
    for got, want in zip(_grads(3 * ours, hidden, weight), _grads(3 * ref, hidden, weight)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # and unscaled, the path that hands back the stored gradients as they are
    again = linear_cross_entropy(hidden, weight, targets, rows_per_chunk=rows_per_chunk)
    for got, want in zip(_grads(again, hidden, weight), _grads(ref, hidden, weight)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_linear_cross_entropy_without_gradients_and_with_a_frozen_head():
    torch.manual_seed(1)
    hidden = torch.randn(40, 8, requires_grad=True)
    weight = torch.randn(30, 8)  # frozen: no gradient is computed for it
    targets = torch.randint(0, 30, (40,))
    ref = F.cross_entropy(hidden @ weight.t(), targets)
    with torch.no_grad():
        no_grad = linear_cross_entropy(hidden, weight, targets, rows_per_chunk=9)
        assert no_grad.item() == pytest.approx(ref.item(), rel=1e-6)
    ours = linear_cross_entropy(hidden, weight, targets, rows_per_chunk=9)
    torch.testing.assert_close(_grads(ours, hidden)[0], _grads(ref, hidden)[0], rtol=1e-5, atol=1e-7)


def test_linear_cross_entropy_of_nothing_is_zero_not_nan():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.full((2, 5), -100))
    assert loss.item() == 0.0
    gh, gw = _grads(loss, hidden, weight)
    assert not gh.any() and not gw.any()


def test_linear_cross_entropy_under_bfloat16_autocast():
    """Under autocast the matmuls run in bf16, as nn.Linear's would; softmax and sums stay float32."""
    torch.manual_seed(2)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = (0.1 * torch.randn(100, 32)).requires_grad_()
    targets = torch.randint(0, 100, (64,))
    ref = F.cross_entropy(hidden @ weight.t(), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets, rows_per_chunk=16)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=2e-2)
    gh, gw = _grads(ours, hidden, weight)
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    rh, rw = _grads(ref, hidden, weight)
    assert F.cosine_similarity(gh.flatten(), rh.flatten(), dim=0) > 0.99
    assert F.cosine_similarity(gw.flatten(), rw.flatten(), dim=0) > 0.99


def test_chunk_rows_keeps_a_cpu_chunk_near_four_megabytes():
    assert chunk_rows(6400, torch.device("cpu")) * 6400 * 4 <= 4 * 2 ** 20
    assert chunk_rows(10 ** 9, torch.device("cpu")) == 1


def test_model_loss_and_gradients_equal_the_plain_formula():
    """The model's loss (computed from the hidden states, logits never built) against cross-entropy of
    its logits with labels shifted by hand: same value, same gradient for every parameter."""
    config = small_config()
    model = random_model(config).double().train()
    x = torch.randint(3, config.vocab_size, (2, 12))
    labels = x.clone()
    labels[0, :4] = -100
    out = model(x, labels=labels)
    assert out._logits is None  # not built for the loss
    ours = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(out.loss, list(model.parameters()))))
    logits = model(x).logits
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-12)
    want = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(ref, list(model.parameters()))))
    for name in want:
        torch.testing.assert_close(ours[name], want[name], rtol=1e-9, atol=1e-12, msg=name)
    # the logits are still there for whoever asks
    torch.testing.assert_close(out.logits, logits)


# -- the plain RMSNorm and RoPE: Llama's numbers -----------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_is_llamas_bit_for_bit(dtype):
    from transformers.models.llama import modeling_llama  # here, not at collection: it loads slowly
    torch.manual_seed(3)
    ours, theirs = RMSNorm(8, eps=1e-5), modeling_llama.LlamaRMSNorm(8, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        theirs.weight.copy_(ours.weight)
    x = torch.randn(2, 5, 8, dtype=dtype, requires_grad=True)
    y = ours(x)
    assert torch.equal(y, theirs(x))
    y.sum().backward()
    assert x.grad.dtype == dtype and ours.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_llamas_bit_for_bit(dtype):
    from transformers.models.llama import modeling_llama  # here, not at collection: it loads slowly
    torch.manual_seed(4)
    b, h, t, d = 2, 3, 5, 8
    q = torch.randn(b, h, t, d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, h - 1, t, d, dtype=dtype)
    cos, sin = rope_cos_sin(rope_inv_freq(d, 10000.0), torch.arange(t).expand(b, t))
    want_q, want_k = modeling_llama.apply_rotary_pos_emb(q, k, cos.to(dtype), sin.to(dtype))
    assert torch.equal(apply_rope(q, cos, sin), want_q) and torch.equal(apply_rope(k, cos, sin), want_k)
    # the (B, T, heads, head_dim) layout straight out of q_proj rotates the same
    rotated = apply_rope(q.transpose(1, 2), cos, sin, unsqueeze_dim=2).transpose(1, 2)
    assert torch.equal(rotated, want_q)


def test_training_forward_is_llamas_bit_for_bit():
    """With gradients on (where the removed fast paths used to run) the logits and the loss are
    transformers' LlamaForCausalLM's, bit for bit, and so are the gradients (up to summation order)."""
    from minimind.use.bench import twin_models
    from minimind.use.export import hf_state_dict
    ours, theirs = twin_models(small_config(), torch.device("cpu"))
    with torch.no_grad():  # weights away from the init, as conftest.random_model makes them
        for p in ours.parameters():
            p.normal_(0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    theirs.load_state_dict(hf_state_dict(ours), strict=False)
    ours.train(), theirs.train()
    x = torch.randint(3, ours.config.vocab_size, (2, 24))
    assert torch.equal(ours(x).logits, theirs(x).logits)
    with fast.plain():  # the loss from the logits, as Llama computes it
        loss = ours(x, labels=x).loss
    ref = theirs(input_ids=x, labels=x).loss
    assert torch.equal(loss, ref)
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    names = sorted(ours_params)  # dense: the same names as Llama's (the tied head is the embedding)
    assert names == sorted(theirs_params)
    ours_grads = dict(zip(names, torch.autograd.grad(loss, [ours_params[n] for n in names])))
    theirs_grads = dict(zip(names, torch.autograd.grad(ref, [theirs_params[n] for n in names])))
    for name in names:
        torch.testing.assert_close(ours_grads[name], theirs_grads[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
@pytest.mark.parametrize("overrides", [{}, MOE], ids=["dense", "moe"])
def test_two_training_steps_under_bfloat16_autocast(overrides, plain):
    """The hand-written RMSNorm backward crashed here (linalg.vecdot: float32 against bfloat16)."""
    config = small_config(**overrides)
    model = random_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(3, config.vocab_size, (2, 12))
    with fast.plain() if plain else contextlib.nullcontext():
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, labels=x).loss
            assert loss.dtype == torch.float32 and math.isfinite(loss.item())
            loss.backward()
            for name, p in model.named_parameters():
                if p.grad is None:  # only a routed expert that no token chose goes without a gradient
                    assert ".mlp.experts." in name, name
                    continue
                assert p.grad.dtype == p.dtype == torch.float32, name
                assert torch.isfinite(p.grad).all(), name
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.model.norm.weight, before["model.norm.weight"])
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight,
                           before["model.layers.0.self_attn.q_proj.weight"])


def test_fast_paths_switch_off_and_back():
    assert fast.FAST_PATHS == {"loss": True}
    config = small_config()
    model = random_model(config).train()
    x = torch.randint(3, config.vocab_size, (2, 12))
    fast_loss = model(x, labels=x).loss
    with fast.plain():
        assert not any(fast.FAST_PATHS.values())
        out = model(x, labels=x)
        assert out._logits is not None  # the plain formula builds the logits
    with fast.plain("loss"):
        assert fast.FAST_PATHS == {"loss": False} and not fast.use("loss")
    assert fast.FAST_PATHS == {"loss": True} and fast.use("loss")
    assert out.loss.item() == pytest.approx(fast_loss.item(), rel=1e-5)
    for removed in ("rmsnorm", "rope"):  # measured, found not to pay, removed (book/performance.md)
        with pytest.raises(ValueError, match="unknown fast path"):
            with fast.plain(removed):
                pass
