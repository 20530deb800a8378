"""Vertical-slash op on CPU (Triton interpreter) against the float64 reference mask."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from custom_ops.vertical_slash.index import SKIP_SHIFT
from custom_ops.vertical_slash import (
    build_vertical_slash_index,
    dedup_on_bands,
    head_fractions,
    vertical_slash_attention_op,
    vertical_slash_sparse_attention_op,
)
from minference_flex.ops import reference
from tests.helpers import assert_close_to_reference, random_qkv

CASES = [  # batch, heads, kv_heads, seq_len, head_dim, n_vertical, n_slash
    (1, 2, 1, 200, 64, 10, 5),  # more columns than offsets: dedup on the bands
    (2, 4, 2, 333, 64, 12, 20),  # batch 2, GQA, odd length: dedup on the columns
    (1, 2, 2, 517, 128, 50, 40),
    (1, 3, 1, 130, 32, 0, 1),  # no columns at all
    (1, 2, 1, 150, 64, 5, 0),  # no slash offsets at all
    (1, 2, 1, 300, 64, 3, 300),  # offsets cover everything
    (1, 2, 1, 700, 64, 300, 20),  # whole column chunks before the tile (no mask)
    (1, 2, 1, 900, 64, 5, 40),  # unmasked band chunks, masked ones, clamped tiles
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
        assert computed_fraction(index, 64).item() <= fraction_bound(nv, ns, -(-s // 64), 64)


def test_sorted_fractions_are_within_two_tiles_per_query_tile_of_the_index():
    """The fallback decision counts tiles from the sorted indices alone: per head, the index's
    tile count minus that count is in [0, M] (its band pieces and packed distances can take
    one tile more than their union needs), [0, 2M] when the bands de-duplicate (one piece
    per head is then a window that skips distances)."""
    from custom_ops.vertical_slash.index import sort_indices, sorted_head_fractions

    def tile_gap(v_idx, s_idx, s, bs):
        nblocks = -(-s // bs)
        dense = nblocks * (nblocks + 1) // 2
        index = build_vertical_slash_index(v_idx, s_idx, s, bs)
        exact = head_fractions(index, bs) * dense
        counted = sorted_head_fractions(sort_indices(v_idx, s_idx, s, bs), bs) * dense
        return (exact - counted).round(), nblocks * (2 if dedup_on_bands(index, s) else 1)

    # tile 2 reads keys through distance 128 (an offset in (128, 192) clamps it): the plain
    # piece [101, 164] cut there (28 distances) and the packed distances 1..84 take 1 + 2
    # tiles for a union of 112 distances
    gap, _ = tile_gap(torch.tensor([[[3]]]), torch.tensor([[[0, 20, 100, 150]]]), 1000, 64)
    assert gap.item() == 1
    gen = torch.Generator().manual_seed(torch.seed())
    for _ in range(40):
        s = int(torch.randint(1, 2500, (1,), generator=gen))
        bs = (16, 32, 64, 128)[int(torch.randint(0, 4, (1,), generator=gen))]
        nv, ns = (int(x) for x in torch.randint(0, 250, (2,), generator=gen))
        spread = (s, 3 * bs, 10)[int(torch.randint(0, 3, (1,), generator=gen))]
        v_idx = torch.randint(-5, s + 5, (2, 3, nv), generator=gen)
        s_idx = torch.randint(-3, spread + 3, (2, 3, ns), generator=gen)
        gap, bound = tile_gap(v_idx, s_idx, s, bs)
        assert (gap >= 0).all() and (gap <= bound).all(), (s, bs, nv, ns, spread, gap)


@pytest.mark.parametrize("budget", [(7, 25), (40, 12)])  # dedup on the columns; on the bands
def test_band_pieces_and_distances_split_the_union_of_the_bands(budget):
    """Whole pieces (bs consecutive distances from u_lo >= 1; at most one with u_lo < bs,
    which reaches into the tile) and the packed distances are disjoint and together the union
    of the bands [s+1, s+bs] (offsets in [0, S) only); tile m runs the pieces and distances
    with u <= e - lower, lower = bs where a band is clamped to keys [0, bs), plus at most one
    piece that straddles e - lower, masked."""
    s, bs = 611, 64
    nblocks = -(-s // bs)
    v_idx, s_idx = _indices(2, 3, s, *budget)
    index = build_vertical_slash_index(v_idx, s_idx, s, bs)
    assert dedup_on_bands(index, s) == (budget[0] > budget[1])
    big = nblocks * bs
    for b in range(2):
        for h in range(3):
            offsets = {o for o in s_idx[b, h].tolist() if 0 <= o < s}
            union = {u for o in offsets for u in range(o + 1, o + bs + 1)}  # may pass M*bs
            entries = [(p % (1 << SKIP_SHIFT), p >> SKIP_SHIFT) for p in index.piece_lo[b, h].tolist()]
            windows = [(lo, lo + bs - 1) for lo, _ in entries if lo <= big]
            # the distances each piece reads: its window after the skip (a run's short last
            # piece, read as a whole window ending at the run's end, skips what its run's
            # previous piece holds)
            pieces = [(lo + skip, lo + bs - 1) for lo, skip in entries if lo <= big]
            assert all(lo >= 1 for lo, _ in pieces) and sum(lo < bs for lo, _ in windows) <= 1
            skips = sum(start > lo for (start, _), (lo, _) in zip(pieces, windows))
            assert skips <= int(dedup_on_bands(index, s))  # one window skips, with dedup on the bands
            assert all(lo >= bs for (lo, _), (start, _) in zip(windows, pieces) if start > lo)  # before the tile
            assert [lo for lo, _ in windows] == sorted(lo for lo, _ in windows)
            in_pieces = [u for lo, hi in pieces for u in range(lo, hi + 1)]
            assert len(in_pieces) == len(set(in_pieces))
            dists = [u for u in index.dists[b, h].tolist() if u <= big]
            assert dists == sorted(dists) and all(u > big for u in index.dists[b, h].tolist()[len(dists):])
            assert not set(in_pieces) & set(dists) and set(in_pieces) <= union
            assert {u for u in set(in_pieces) | set(dists) if u <= big} == {u for u in union if u <= big}
            for m in range(nblocks):
                end = (m + 1) * bs
                clamped = any(end - bs < o < end for o in offsets)
                assert index.clamped[b, h, m].item() == clamped
                reach = end - (bs if clamped else 0)
                r0, r1 = index.piece_ranges[b, h, m].tolist()
                assert r0 == sum(hi <= reach for _, hi in pieces) and r1 == sum(lo <= reach for lo, _ in pieces)
                assert index.dist_count[b, h, m].item() == sum(u <= reach for u in dists)


def test_every_band_kind_matches_reference(nan_empty):
    """Unmasked plain pieces, a piece reaching into the tile (causal), a piece reaching below
    a clamped tile's lowest key, packed distances in full and partial chunks, on offsets
    placed to produce each, with columns de-duplicated against them."""
    s, bs = 900, 64
    q, k, v = random_qkv(1, 2, 1, s, 64)
    s_idx = torch.tensor([[[0, 5, 100, 130, 150, 333, 500, 505, 700, 730], [64, 200, 201, 420, 421, 800, 90, 77, 99, 850]]])
    v_idx = torch.randint(0, s, (1, 2, 6))
    index = build_vertical_slash_index(v_idx, s_idx, s, bs)
    assert not dedup_on_bands(index, s)
    r0, r1 = index.piece_ranges.unbind(-1)
    assert (r0 > 0).any(), "no unmasked piece"
    assert (r1 > r0).any(), "no piece reaching below a clamped tile's lowest key"
    assert (index.piece_lo[..., 0] < bs).any(), "no piece reaching into the tile (causal)"
    assert (index.dist_count > bs).any() and (index.dist_count % bs != 0).any(), "no full and partial chunks"
    assert index.clamped.bool().any()
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    assert_close_to_reference(out, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, s))


def test_band_pieces_skip_columns_when_dedup_on_bands(nan_empty):
    """With more columns than offsets the bands skip the column keys: a local band of offsets
    (whole pieces near the diagonal, in the middle and clamped, a packed remainder) under
    dense columns, against the reference."""
    s, bs = 700, 64
    q, k, v = random_qkv(1, 2, 1, s, 64)
    s_idx = torch.cat([torch.arange(150), torch.tensor([420, 460])]).expand(1, 2, -1)
    v_idx = torch.randint(0, s, (1, 2, 250))
    index = build_vertical_slash_index(v_idx, s_idx, s, bs)
    assert dedup_on_bands(index, s)
    r0, r1 = index.piece_ranges.unbind(-1)
    assert (index.piece_lo[..., 0] < bs).all() and (r0 > 1).any() and (r1 > r0).any()
    assert (index.dist_count > 0).any() and index.clamped.bool().any()
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    assert_close_to_reference(out, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, s))


def test_index_rejects_lengths_past_its_piece_encoding():
    from custom_ops.vertical_slash.index import index_from_sorted, sort_indices

    s = 1 << SKIP_SHIFT
    with pytest.raises(ValueError, match="split the prompt"):
        index_from_sorted(sort_indices(torch.zeros(1, 1, 2), torch.zeros(1, 1, 1), s, 64), s, 64)


def test_both_dedup_sides_are_exercised():
    index = build_vertical_slash_index(torch.zeros(1, 1, 9), torch.zeros(1, 1, 3), 100, 64)
    assert dedup_on_bands(index, 100)
    index = build_vertical_slash_index(torch.zeros(1, 1, 3), torch.zeros(1, 1, 9), 100, 64)
    assert not dedup_on_bands(index, 100)


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
    torch.library.opcheck(vertical_slash_attention_op, (q, k, v, *index, 64, 0.125))
    for dense_above in (2.0, 0.0):  # the kernel, and the dense fallback
        torch.library.opcheck(vertical_slash_sparse_attention_op, (q, k, v, v_idx, s_idx, 64, 0.125, dense_above))
    from custom_ops.vertical_slash.index import vertical_slash_index_op

    for nv, ns in ((9, 4), (3, 7), (0, 5), (4, 0)):  # both dedup sides, no columns, no offsets
        torch.library.opcheck(vertical_slash_index_op, (*_indices(2, 3, 150, nv, ns), 150, 64, 150))


def test_dense_fallback_threshold_dispatches(monkeypatch):
    q, k, v = random_qkv(1, 2, 1, 2048, 64)
    dense = mf.dense_attention(q, k, v)
    # a local band and one column: far below the threshold, so the sparse kernel runs
    v_idx = torch.zeros(1, 2, 1, dtype=torch.long)
    s_idx = torch.arange(4).expand(1, 2, 4)
    sparse = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)
    assert (sparse - dense).abs().max() > 1e-2
    assert_close_to_reference(sparse, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, 2048))
    # offsets every 64 keys cover every tile: above the threshold, so dense SDPA runs, without
    # building the rest of the index
    import custom_ops.vertical_slash.op as op

    def no_index(*args):
        raise AssertionError("the index was built for a dense fallback")

    s_idx = torch.arange(0, 2048, 64).expand(1, 2, -1)
    monkeypatch.setattr(op, "index_from_sorted", no_index)
    torch.testing.assert_close(mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx), dense)
