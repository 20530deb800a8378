"""Queries at the end of the keys (chunked pre-fill over a KV cache): every op with Sq < Sk
against float64 references built from the documented semantics (query i at p = Sk - Sq + i)."""

from __future__ import annotations

import math

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import reference
from minference_flex.ops.estimate import select_block_sparse_tiles
from tests.helpers import assert_close_to_reference

# batch, heads, kv_heads, Sq, Sk, head_dim: odd lengths, offsets on and off 64-token
# boundaries, GQA, batch > 1, a single query (a decode step), head dims 64 and 128
SHAPES = [
    (2, 4, 2, 193, 449, 64),  # offset 256: on a boundary
    (1, 4, 1, 101, 300, 128),  # offset 199: off
    (2, 2, 2, 1, 333, 64),  # one query
    (1, 2, 1, 257, 257, 64),  # Sq == Sk
]
IDS = ["aligned", "unaligned", "decode", "whole"]


def _qkv(b, h, hk, sq, sk, d, dtype=torch.float32):
    q = torch.randn(b, h, sq, d).to(dtype)
    k = torch.randn(b, hk, sk, d).to(dtype)
    v = torch.randn(b, hk, sk, d).to(dtype)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_dense_attention_at_the_end_of_the_keys(shape):
    b, h, hk, sq, sk, d = shape
    q, k, v = _qkv(b, h, hk, sq, sk, d)
    out = mf.dense_attention(q, k, v)
    assert_close_to_reference(out, q, k, v, reference.causal_mask(sk, q_len=sq))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_vertical_slash_at_the_end_of_the_keys(shape, nan_empty):
    b, h, hk, sq, sk, d = shape
    q, k, v = _qkv(b, h, hk, sq, sk, d)
    # columns and offsets anywhere in [0, Sk) plus out-of-range ones, which are ignored
    v_idx = torch.randint(-3, sk + 5, (b, h, 9))
    s_idx = torch.cat([torch.arange(3).expand(b, h, 3), torch.randint(0, sk + 5, (b, h, 6))], -1)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    mask = reference.vertical_slash_mask(v_idx, s_idx, sk, 64, q_len=sq)
    assert_close_to_reference(out, q, k, v, mask)


def test_vertical_slash_dense_fallback_at_the_end_of_the_keys():
    q, k, v = _qkv(1, 2, 1, 130, 400, 64)
    v_idx, s_idx = torch.arange(400).expand(1, 2, 400), torch.arange(400).expand(1, 2, 400)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)
    assert_close_to_reference(out, q, k, v, reference.causal_mask(400, q_len=130))


@pytest.mark.parametrize("shape", SHAPES[:3], ids=IDS[:3])
def test_estimator_scores_the_last_queries_by_absolute_position(shape):
    b, h, hk, sq, sk, d = shape
    q, k, _ = _qkv(b, h, hk, sq, sk, d)
    nv, ns = 40, 120
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns, last_q=64)
    vertical, slash = reference.estimate_vertical_slash_scores(q, k, last_q=64)
    for idx, scores, forced in ((v_idx, vertical, 30), (s_idx, slash, 100)):
        want = min(idx.shape[-1], sk)
        assert idx.shape[-1] == want
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
        assert chosen[..., :forced].all(), "the always-kept set is missing"
        # every chosen score is at least every unchosen one (outside the forced set)
        free = scores.clone()
        free[..., :forced] = float("inf")
        lowest_chosen = torch.where(chosen, free, float("inf")).amin(-1)
        highest_left = torch.where(chosen, float("-inf"), free).amax(-1)
        assert (lowest_chosen >= highest_left - 1e-6).all()


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[2]], ids=IDS[:3])
def test_a_shape_at_the_end_of_the_keys(shape):
    b, h, hk, sq, sk, d = shape
    q, k, v = _qkv(b, h, hk, sq, sk, d)
    for init, local in ((5, 70), (130, 1)):
        out = mf.streaming_forward(q, k, v, init, local)
        assert_close_to_reference(out, q, k, v, reference.a_shape_mask(sk, init, local, q_len=sq))


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[2]], ids=IDS[:3])
def test_block_sparse_at_the_end_of_the_keys(shape):
    b, h, hk, sq, sk, d = shape
    q, k, v = _qkv(b, h, hk, sq, sk, d)
    for topk in (1, 3):
        out = mf.block_sparse_attention(q, k, v, topk)
        assert_close_to_reference(out, q, k, v, reference.block_sparse_mask(q, k, topk))


@pytest.mark.parametrize("sq, sk", [(300, 1000), (256, 700), (1, 500)])
def test_block_tile_selection_at_the_end_of_the_keys(sq, sk):
    q, k, _ = _qkv(2, 4, 2, sq, sk, 64)
    tiles, count = select_block_sparse_tiles(q, k, 4, 64)
    scores = reference.block_sparse_scores(q, k, 64)
    q_tiles, k_tiles = scores.shape[-2:]
    assert tiles.shape[2] == q_tiles and count.shape[2] == q_tiles
    best = scores.topk(min(4, k_tiles), -1)
    want = torch.zeros(scores.shape, dtype=torch.bool).scatter_(-1, best.indices, best.values > float("-inf"))
    diagonal = (sk - sq) // 64 + torch.arange(q_tiles)
    want[:, :, torch.arange(q_tiles), diagonal] = False  # the diagonal is the caller's
    got = torch.zeros(*scores.shape[:-1], k_tiles + 1, dtype=torch.bool)
    valid = torch.arange(tiles.shape[-1]) < count[..., None]
    got.scatter_(-1, torch.where(valid, tiles.long(), k_tiles), True)
    assert torch.equal(got[..., :k_tiles], want)


def _chunks_equal_rows_of_the_whole(run, chunk, seq_len, atol):
    q, k, v = _qkv(1, 4, 2, seq_len, seq_len, 64)
    whole = run(q, k, v)
    for a in range(0, seq_len, chunk):
        b = min(a + chunk, seq_len)
        part = run(q[:, :, a:b], k[:, :, :b], v[:, :, :b])
        torch.testing.assert_close(part, whole[:, :, a:b], atol=atol, rtol=0)


def test_chunks_on_64_token_boundaries_give_the_rows_of_the_whole():
    seq_len, chunk = 449, 128
    _chunks_equal_rows_of_the_whole(lambda q, k, v: mf.dense_attention(q, k, v), chunk, seq_len, 1e-5)
    _chunks_equal_rows_of_the_whole(lambda q, k, v: mf.streaming_forward(q, k, v, 7, 90), chunk, seq_len, 1e-5)
    _chunks_equal_rows_of_the_whole(lambda q, k, v: mf.block_sparse_attention(q, k, v, 2), chunk, seq_len, 1e-5)
    v_idx = torch.randint(0, seq_len, (1, 4, 12))
    s_idx = torch.randint(0, seq_len, (1, 4, 7))
    _chunks_equal_rows_of_the_whole(
        lambda q, k, v: mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False),
        chunk, seq_len, 1e-5,
    )


def test_chunk_longer_than_the_keys_is_named():
    q, k, v = _qkv(1, 2, 1, 100, 60, 64)
    with pytest.raises(ValueError, match=r"q has more positions \(100\) than k and v \(60\)"):
        mf.streaming_forward(q, k, v, 4, 8)


def _nan_rows_reached(out, mask):
    """(rows that attend the poisoned key are NaN, rows that attend none of it are finite)."""
    touched = mask.any(-1)
    nan_rows = torch.isnan(out).any(-1)
    return bool(nan_rows[touched].all()), touched


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_reaches_the_rows_it_touches(where):
    b, h, hk, sq, sk = 1, 2, 1, 130, 320
    q, k, v = _qkv(b, h, hk, sq, sk, 64)
    poisoned_key = 250
    if where == "q":
        q[:, :, 70] = float("nan")
    else:
        (k if where == "k" else v)[:, :, poisoned_key, 3] = float("nan")
    v_idx = torch.tensor([[[0, 1, poisoned_key]]]).expand(b, h, 3)
    s_idx = torch.tensor([[[0, 1, 5]]]).expand(b, h, 3)
    ops = {
        "dense": (lambda: mf.dense_attention(q, k, v), reference.causal_mask(sk, q_len=sq)),
        "a_shape": (lambda: mf.streaming_forward(q, k, v, 4, 200), reference.a_shape_mask(sk, 4, 200, q_len=sq)),
        "block_sparse": (lambda: mf.block_sparse_attention(q, k, v, 2), reference.block_sparse_mask(q, k, 2)),
        "vertical_slash": (
            lambda: mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False),
            reference.vertical_slash_mask(v_idx, s_idx, sk, 64, q_len=sq),
        ),
    }
    for name, (run, mask) in ops.items():
        out = run()
        if where == "q":
            assert torch.isnan(out[:, :, 70]).all(), f"{name}: a NaN query row did not give NaN"
            assert torch.isfinite(out[:, :, :64]).all(), f"{name}: NaN reached another query tile"
        else:
            attends = mask[..., poisoned_key].expand(b, h, sq)
            assert attends.any(), name
            assert torch.isnan(out).any(-1)[attends].all(), f"{name}: a row attending the NaN {where} is finite"


def test_fullgraph_compile_with_an_offset():
    q, k, v = _qkv(1, 4, 2, 130, 330, 64)

    def estimate_and_attend(q, k, v):
        return mf.dynamic_vertical_slash_attention(q, k, v, 40, 120, dense_fallback=False)

    compiled = torch.compile(estimate_and_attend, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), estimate_and_attend(q, k, v))
    fn = torch.compile(lambda q, k, v: mf.block_sparse_attention(q, k, v, 2), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v), mf.block_sparse_attention(q, k, v, 2))


def test_chunks_of_one_length_reuse_the_compiled_kernels():
    """Each chunk has a new offset; the offset is data, so the kernel compiles once."""
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    q, k, v = _qkv(1, 2, 1, 640, 640, 64)
    for a in range(128, 640, 128):
        out = mf.streaming_forward(q[:, :, a:a + 128], k[:, :, :a + 128], v[:, :, :a + 128], 4, 100)
        assert_close_to_reference(out, q[:, :, a:a + 128], k[:, :, :a + 128], v[:, :, :a + 128],
                                  reference.a_shape_mask(a + 128, 4, 100, q_len=128))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before <= 2


def test_fraction_of_the_rectangle_counts_the_cached_tiles():
    from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction, fraction_bound

    sq, sk, bs = 256, 1024, 64
    # every key as a column: tile m reads e / bs column chunks, the dense count exactly
    index = build_vertical_slash_index(torch.arange(sk).expand(1, 1, sk), torch.empty(1, 1, 0, dtype=torch.long),
                                       sk, bs, q_len=sq)
    assert computed_fraction(index, bs, sk - sq).item() == 1.0
    nblocks = math.ceil(sq / bs)
    sparse = build_vertical_slash_index(torch.arange(30).expand(1, 1, 30), torch.arange(100).expand(1, 1, 100), sk, bs, q_len=sq)
    got = computed_fraction(sparse, bs, sk - sq).item()
    assert got <= fraction_bound(30, 100, nblocks, bs, sk - sq)
    assert got < 0.5
