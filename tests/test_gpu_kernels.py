"""GPU checks of every kernel against float64 references (bf16/fp16). Run: pytest -m gpu."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from minference_flex import reference
from tests.helpers import assert_close_to_reference, random_qkv

pytestmark = pytest.mark.gpu

SHAPES = [  # batch, heads, kv_heads, seq_len, head_dim
    (1, 4, 1, 1000, 128),
    (2, 4, 2, 1537, 64),
    (1, 2, 2, 2048, 128),
]
DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_streaming_forward_cuda(shape, dtype):
    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
    out = mf.streaming_forward(q, k, v, 7, 300)
    assert_close_to_reference(out, q, k, v, reference.a_shape_mask(s, 7, 300, "cuda"))


def _mask_of_selection(tiles, count, seq_len, block=64):
    nblocks = -(-seq_len // block)
    keep = torch.zeros(*tiles.shape[:2], nblocks, nblocks + 1, dtype=torch.bool, device=tiles.device)
    valid = torch.arange(tiles.shape[-1], device=tiles.device) < count[..., None]
    keep.scatter_(-1, torch.where(valid, tiles.long(), nblocks), True)
    keep = keep[..., :nblocks] | torch.eye(nblocks, dtype=torch.bool, device=tiles.device)
    tile_of = torch.arange(seq_len, device=tiles.device) // block
    return keep[:, :, tile_of][:, :, :, tile_of] & reference.causal_mask(seq_len, tiles.device)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_cuda(shape, dtype):
    """Pooled scores are bf16/fp16 on CUDA, so near-ties may pick other tiles than the float64
    reference: the attention is checked on the op's own selection, and the selection by its
    float64 score total, which must match the best total to bf16 precision."""
    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
    out = mf.block_sparse_attention(q, k, v, topk=5)
    tiles, count = mf.select_block_sparse_tiles(q, k, 5)
    assert_close_to_reference(out, q, k, v, _mask_of_selection(tiles, count, s))
    ref_keep = reference.block_sparse_mask(q, k, 5)[:, :, ::64, ::64]
    got_keep = _mask_of_selection(tiles, count, s)[:, :, ::64, ::64]
    pooled = reference.block_sparse_scores(q, k)
    ref_total = pooled.where(ref_keep, 0).sum(-1)
    got_total = pooled.where(got_keep, 0).sum(-1)
    torch.testing.assert_close(got_total, ref_total, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vertical_slash_cuda(shape, dtype):
    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d, dtype, "cuda")
    v_idx = torch.randint(-3, s + 3, (b, h, 57), device="cuda")
    s_idx = torch.randint(-3, s + 3, (b, h, 9), device="cuda")
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    mask = reference.vertical_slash_mask(v_idx, s_idx, s)
    assert_close_to_reference(out, q, k, v, mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_estimate_then_attend_compiles_fullgraph_cuda(dtype):
    q, k, v = random_qkv(1, 8, 2, 4099, 128, dtype, "cuda")

    def estimate_and_attend(q, k, v):
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, 200, 300)
        out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
        return out, v_idx, s_idx

    out, v_idx, s_idx = torch.compile(estimate_and_attend, fullgraph=True)(q, k, v)
    mask = reference.vertical_slash_mask(v_idx, s_idx, 4099)
    assert_close_to_reference(out, q, k, v, mask)


def test_full_budgets_equal_dense_cuda():
    q, k, v = random_qkv(1, 4, 2, 3001, 128, torch.bfloat16, "cuda")
    dense = mf.dense_attention(q, k, v).float()
    ref = reference.masked_attention(q, k, v, reference.causal_mask(3001, "cuda"))
    tol = 2 * (dense.double() - ref).abs().max().item() + 1e-3
    for out in (
        mf.streaming_forward(q, k, v, 0, 3001),
        mf.block_sparse_attention(q, k, v, topk=10**6),
        mf.dynamic_vertical_slash_attention(q, k, v, 3001, 3001, dense_fallback=False),
    ):
        assert (out.double() - ref).abs().max().item() <= tol
