"""Chapter 14, tools: running a tool call, and CISPO's loss."""
from __future__ import annotations

import json

import torch

from . import exercise


@exercise("14.run_call", "course_tools() is the chapter's toolbox; toolbox.run(ToolCall(name, arguments)) runs one "
                         "call and returns the JSON text the model reads in its tool turn")
def _check_call(result):
    from ...model.tools import ToolCall, course_tools
    want = course_tools().run(ToolCall("add", {"a": 27, "b": 15}))
    if isinstance(result, dict):
        result = json.dumps(result)
    if json.loads(result) != json.loads(want):
        return f"{result}; the toolbox answers {want}"
    return None


@exercise("14.cispo_loss", "the weight is min(ratio, eps_high) with ratio = exp(logp - old_logp), detached (no "
                           "gradient through it); the loss per token is -weight * A * logp, A per episode (N,)")
def _check_cispo(cispo_loss):
    from ...align.agent import cispo_loss as reference
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g) * 3
    logp = (old + torch.randn(3, 5, generator=g)).requires_grad_()
    adv, mask = torch.tensor([1.0, -0.5, 2.0]), torch.ones(3, 5)
    got = cispo_loss(logp, old, adv, mask, 1.5)
    want = reference(logp, old, adv, mask, 1.5)
    if tuple(got.shape) != tuple(want.shape):
        return f"the loss has shape {tuple(got.shape)}; expected {tuple(want.shape)}, one per token"
    if not torch.allclose(got, want, atol=1e-5):
        return "the per-token losses differ from CISPO's (is the ratio capped at eps_high?)"
    (g_got,) = torch.autograd.grad(got.sum(), logp)
    (g_want,) = torch.autograd.grad(want.sum(), logp)
    if not torch.allclose(g_got, g_want, atol=1e-5):
        return "the gradient differs: no gradient may flow through the weight (detach it)"
    return None
