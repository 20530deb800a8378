"""Vertical-slash op on CPU (Triton interpreter) against the float64 reference mask."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from custom_ops.vertical_slash import (
    build_vertical_slash_index,
    dedup_on_bands,
    vertical_slash_attention_op,
)
from minference_flex import reference
from tests.helpers import assert_close_to_reference, random_qkv

CASES = [  # batch, heads, kv_heads, seq_len, head_dim, n_vertical, n_slash
    (1, 2, 1, 200, 64, 10, 5),  # more columns than offsets: dedup on the bands
    (2, 4, 2, 333, 64, 12, 20),  # batch 2, GQA, odd length: dedup on the columns
    (1, 2, 2, 517, 128, 50, 40),
    (1, 3, 1, 130, 32, 0, 1),  # no columns at all
    (1, 2, 1, 300, 64, 3, 300),  # offsets cover everything
    (1, 2, 1, 700, 64, 300, 20),  # whole column chunks before the tile (no mask)
    (1, 2, 1, 900, 64, 5, 40),  # plain band pieces (no mask), masked ones, clamped tiles
    (2, 2, 1, 260, 96, 40, 30),  # head_dim that is not a power of two
]


def _indices(b, h, s, nv, ns):
    # out-of-range values on purpose: they must be ignored, never read
    v_idx = torch.randint(-5, s + 5, (b, h, nv))
    s_idx = torch.randint(-5, s + 5, (b, h, ns))
    return v_idx, s_idx


@pytest.mark.parametrize("case", CASES)
def test_vertical_slash_matches_reference(case, nan_empty):
    b, h, hk, s, d, nv, ns = case
    q, k, v = random_qkv(b, h, hk, s, d)
    v_idx, s_idx = _indices(b, h, s, nv, ns)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    assert_close_to_reference(out, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, s))


def test_fraction_bound_holds():
    """The static bound that lets the op skip the host sync is never below the real fraction."""
    from custom_ops.vertical_slash import computed_fraction, fraction_bound

    for s, nv, ns, spread in ((2000, 5, 40, 2000), (700, 300, 20, 700), (3000, 0, 90, 150), (640, 64, 640, 640)):
        index = build_vertical_slash_index(torch.randint(0, s, (2, 3, nv)), torch.randint(0, spread, (2, 3, ns)), s, 64)
        assert computed_fraction(index, 64).item() <= fraction_bound(index, 64)


def test_plain_pieces_and_column_chunks_are_exercised():
    b, h, hk, s, d, nv, ns = CASES[6]
    ranges = build_vertical_slash_index(*_indices(b, h, s, nv, ns), s, 64).piece_ranges
    assert (ranges[..., 0] > 0).any(), "no plain piece"
    assert (ranges[..., 3] > ranges[..., 2]).any(), "no masked piece"


def test_both_dedup_sides_are_exercised():
    index = build_vertical_slash_index(torch.zeros(1, 1, 9), torch.zeros(1, 1, 3), 100, 64)
    assert dedup_on_bands(index)
    index = build_vertical_slash_index(torch.zeros(1, 1, 3), torch.zeros(1, 1, 9), 100, 64)
    assert not dedup_on_bands(index)


def test_fp16_and_block_size_32(nan_empty):
    q, k, v = random_qkv(1, 2, 1, 257, 64, torch.float16)
    v_idx, s_idx = _indices(1, 2, 257, 40, 8)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, block_size=32, dense_fallback=False)
    assert out.dtype == torch.float16
    assert_close_to_reference(out, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, 257, 32))


def test_duplicates_and_order_do_not_matter():
    q, k, v = random_qkv(1, 2, 1, 190, 64)
    v_idx, s_idx = _indices(1, 2, 190, 20, 6)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    shuffled = mf.vertical_slash_sparse_attention(
        q, k, v, torch.cat([v_idx, v_idx], -1).flip(-1), torch.cat([s_idx.flip(-1), s_idx], -1),
        dense_fallback=False,
    )
    torch.testing.assert_close(out, shuffled)


def test_full_budgets_equal_dense():
    q, k, v = random_qkv(2, 4, 2, 211, 64)
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, 10**6, 10**6)
    assert v_idx.shape[-1] == 211 and s_idx.shape[-1] == 211  # budgets clamped to the prompt
    dense = reference.masked_attention(q, k, v, reference.causal_mask(211))
    for fallback in (False, True):  # sparse kernel, then the dense dispatch
        out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=fallback)
        assert (out.double() - dense).abs().max() < 1e-5


def test_estimate_then_attend_compiles_fullgraph():
    q, k, v = random_qkv(1, 4, 2, 300, 64)

    def estimate_and_attend(q, k, v):
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, 40, 110)
        out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)
        return out, v_idx, s_idx

    compiled = torch.compile(estimate_and_attend, fullgraph=True)
    out, v_idx, s_idx = compiled(q, k, v)
    eager = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)
    torch.testing.assert_close(out, eager)
    # only index values change: no recompile
    q2, k2, v2 = random_qkv(1, 4, 2, 300, 64)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled(q2, k2, v2)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before


def test_opcheck():
    q, k, v = random_qkv(1, 2, 1, 150, 64)
    v_idx, s_idx = _indices(1, 2, 150, 9, 4)
    index = build_vertical_slash_index(v_idx, s_idx, 150, 64)
    for dense_above in (2.0, 0.0):  # the kernel, and the dense fallback
        torch.library.opcheck(vertical_slash_attention_op, (q, k, v, *index, 64, 0.125, dense_above))


def test_dense_fallback_threshold_dispatches():
    q, k, v = random_qkv(1, 2, 1, 2048, 64)
    dense = mf.dense_attention(q, k, v)
    # a local band and one column: far below the threshold, so the sparse kernel runs
    v_idx = torch.zeros(1, 2, 1, dtype=torch.long)
    s_idx = torch.arange(4).expand(1, 2, 4)
    sparse = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)
    assert (sparse - dense).abs().max() > 1e-2
    assert_close_to_reference(sparse, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, 2048))
    # offsets every 64 keys cover every tile: above the threshold, so dense SDPA runs
    s_idx = torch.arange(0, 2048, 64).expand(1, 2, -1)
    torch.testing.assert_close(mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx), dense)
