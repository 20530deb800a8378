"""Shared test helpers: random inputs and error checks against float64 references."""

from __future__ import annotations

import torch

from minference_flex import reference


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
