"""The hand-written fast paths (loss.py, RMSNorm's and RoPE's backward passes) against the plain formulas
that autograd differentiates: same values, same gradients."""
import pytest
import torch
import torch.nn.functional as F

from conftest import random_model, small_config
from minimind import fast
from minimind.layers import RMSNorm, rms_norm_reference
from minimind.loss import chunk_rows, linear_cross_entropy
from minimind.rope import apply_rope, rope_cos_sin, rope_inv_freq, rotate_half


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
        assert linear_cross_entropy(hidden, weight, targets, rows_per_chunk=9).item() == pytest.approx(ref.item(), rel=1e-6)
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


# -- RMSNorm and RoPE ------------------------------------------------------------------------------
def test_rmsnorm_backward_is_the_derivative():
    torch.manual_seed(3)
    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.add_(torch.randn(6, dtype=torch.float64))
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: RMSNorm.forward(norm, x), (x, norm.weight))
    torch.testing.assert_close(norm(x), rms_norm_reference(x, norm.weight, 1e-5))
    g = torch.randn(2, 3, 6, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(norm(x), (x, norm.weight), g),
                         torch.autograd.grad(rms_norm_reference(x, norm.weight, 1e-5), (x, norm.weight), g)):
        torch.testing.assert_close(got, want)


def test_rmsnorm_keeps_a_bfloat16_input_dtype_like_llama():
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    norm = RMSNorm(8)
    y = norm(x)
    torch.testing.assert_close(y, rms_norm_reference(x, norm.weight, norm.eps))
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_rope_fast_rotation_equals_the_formula_and_its_backward(unsqueeze_dim):
    torch.manual_seed(4)
    b, h, t, d = 2, 3, 5, 8
    shape = (b, h, t, d) if unsqueeze_dim == 1 else (b, t, h, d)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_cos_sin(rope_inv_freq(d, 10000.0).double(), torch.arange(t).expand(b, t))
    cos, sin = cos.double(), sin.double()
    formula = x * cos.unsqueeze(unsqueeze_dim) + rotate_half(x) * sin.unsqueeze(unsqueeze_dim)
    torch.testing.assert_close(apply_rope(x, cos, sin, unsqueeze_dim), formula)
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, cos, sin, unsqueeze_dim), (x,))
    # a non-contiguous input (heads moved) rotates the same
    xt = x.detach().transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(apply_rope(xt, cos, sin, unsqueeze_dim), formula.detach())


def test_fast_paths_switch_off_and_back():
    config = small_config()
    model = random_model(config).train()
    x = torch.randint(3, config.vocab_size, (2, 12))
    fast_loss = model(x, labels=x).loss
    with fast.plain():
        assert not any(fast.FAST_PATHS.values())
        out = model(x, labels=x)
        assert out._logits is not None  # the plain formula builds the logits
    with fast.plain("rope"):
        assert fast.FAST_PATHS == {"loss": True, "rmsnorm": True, "rope": False}
    assert all(fast.FAST_PATHS.values())
    assert out.loss.item() == pytest.approx(fast_loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown fast path"):
        with fast.plain("rmsnorn"):
            pass
