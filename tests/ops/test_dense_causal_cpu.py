"""Dense causal attention in row chunks merged by log-sum-exp (custom_ops.dense_causal), on CPU:
the merge kernel under Triton's interpreter, the chunk driver with a float64 stand-in for cuDNN."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from custom_ops.dense_causal import chunk_bounds, chunked_causal_attention
from custom_ops.dense_causal.kernel import merge_two_into
from minference_flex.ops import reference
from tests.helpers import assert_close_to_reference, random_qkv


def _reference_attend(q, k, v, causal, scale):
    """What cuDNN returns, in float64: (out, natural lse) over keys k, v; causal = top-left."""
    rows, keys = q.shape[2], k.shape[2]
    mask = reference.causal_mask(rows) if causal else torch.ones(rows, keys, dtype=torch.bool)
    out, lse = reference.masked_attention(q, k, v, mask, scale, return_lse=True)
    return out.to(q.dtype), lse.float()[..., None]


@pytest.mark.parametrize("dim", [64, 96, 128])
def test_merge_two_into_weighs_by_lse(dim):
    bsz, heads, rows = 2, 3, 77
    a = torch.randn(bsz, heads, rows, dim)
    b = torch.randn(bsz, rows, heads, dim).transpose(1, 2)  # strided like a [B, S, H, D] layout
    lse_a, lse_b = torch.randn(bsz, heads, rows) * 4, torch.randn(bsz, heads, rows, 1) * 4
    lse_a[0, 1, :5] = float("-inf")  # rows with no key in part a
    a[0, 1, :5] = float("nan")  # ... whose output must not be read
    out = torch.full((bsz, heads, rows + 9, dim), float("nan"))
    merge_two_into(out[:, :, 9:], a, lse_a, b, lse_b)
    weights = torch.softmax(torch.stack([lse_a, lse_b.squeeze(-1)]).double(), 0)
    expected = a.double().nan_to_num(0.0) * weights[0][..., None] + b.double() * weights[1][..., None]
    torch.testing.assert_close(out[:, :, 9:].double(), expected, rtol=1e-5, atol=1e-5)
    assert out[:, :, :9].isnan().all(), "rows outside the slice were written"


def test_merge_two_into_rejects_strided_last_dim():
    a = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="unit last stride"):
        merge_two_into(torch.empty(1, 2, 16, 8).transpose(-1, -2), a, torch.zeros(1, 2, 8), a, torch.zeros(1, 2, 8))


@pytest.mark.parametrize("seq_len,chunk_rows,chunks", [
    (1000, 300, 4), (257, 128, 3), (4096, 1024, 4), (130, 1000, 1), (129, 50, 2), (131072, 32768, 4),
])
def test_chunk_bounds_cover_the_rows(seq_len, chunk_rows, chunks):
    bounds = chunk_bounds(seq_len, chunk_rows)
    assert bounds[0] == 0 and bounds[-1] == seq_len
    assert all(a < b for a, b in zip(bounds, bounds[1:])), bounds
    assert len(bounds) - 1 == chunks
    assert all(b % 128 == 0 for b in bounds[1:-1])
    assert len({b - a for a, b in zip(bounds[:-2], bounds[1:-1])}) <= 1, "chunks but the last have one length"


@pytest.mark.parametrize("shape,chunk_rows", [
    ((2, 4, 2, 1000, 64), 300),
    ((1, 6, 2, 777, 128), 256),
    ((1, 2, 2, 513, 32), 128),
])
def test_chunks_equal_dense_causal(shape, chunk_rows):
    bsz, heads, kv_heads, seq_len, dim = shape
    q, k, v = random_qkv(bsz, heads, kv_heads, seq_len, dim)
    scale = dim**-0.5
    assert len(chunk_bounds(seq_len, chunk_rows)) > 3
    out = chunked_causal_attention(q, k, v, scale, chunk_rows, _reference_attend)
    assert_close_to_reference(out, q, k, v, reference.causal_mask(seq_len))

    def broken(q, k, v, causal, scale):  # the rectangle before each chunk sees one key only
        keep = k.shape[2] if causal else 1
        return _reference_attend(q, k[:, :, :keep], v[:, :, :keep], causal, scale)

    with pytest.raises(AssertionError):
        assert_close_to_reference(chunked_causal_attention(q, k, v, scale, chunk_rows, broken),
                                  q, k, v, reference.causal_mask(seq_len))


def test_dense_attention_op_compiles_fullgraph():
    q, k, v = random_qkv(1, 4, 2, 300, 64)
    out = torch.compile(mf.dense_attention, fullgraph=True)(q, k, v)
    assert_close_to_reference(out, q, k, v, reference.causal_mask(300))
