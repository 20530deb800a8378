"""Gradients of every op on CPU (fp32; Triton kernels under the interpreter) against float64
autograd of masked attention with the mask built from each op's documented semantics."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import reference
from minference_flex.ops.estimate import select_block_sparse_tiles
from tests.helpers import assert_close_to_reference, assert_grads_close_to_reference, reference_grads, random_qkv

SHAPES = [  # batch, heads, kv_heads, seq_len, head_dim
    (2, 4, 2, 333, 64),  # batch 2, GQA, odd length
    (1, 2, 1, 517, 128),
    (1, 3, 3, 130, 64),
]


def _leaves(shape, dtype=torch.float32):
    b, h, hk, s, d = shape
    return [t.requires_grad_() for t in random_qkv(b, h, hk, s, d, dtype)]


def _grads(out, q, k, v):
    grad_out = torch.randn_like(out)
    return torch.autograd.grad(out, (q, k, v), grad_out), grad_out


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_attention_grads(shape):
    q, k, v = _leaves(shape)
    grads, grad_out = _grads(mf.dense_attention(q, k, v), q, k, v)
    assert_grads_close_to_reference(grads, q, k, v, reference.causal_mask(shape[3]), grad_out)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("init, local", [(5, 70), (0, 200), (130, 1)])
def test_streaming_forward_grads(shape, init, local):
    q, k, v = _leaves(shape)
    grads, grad_out = _grads(mf.streaming_forward(q, k, v, init, local), q, k, v)
    assert_grads_close_to_reference(grads, q, k, v, reference.a_shape_mask(shape[3], init, local), grad_out)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("topk", [1, 3])
def test_block_sparse_grads(shape, topk):
    q, k, v = _leaves(shape)
    grads, grad_out = _grads(mf.block_sparse_attention(q, k, v, topk), q, k, v)
    mask = reference.block_sparse_mask(q.detach(), k.detach(), topk)
    assert_grads_close_to_reference(grads, q, k, v, mask, grad_out)


def test_rows_without_keys_give_zero_grads():
    """A-shape with (0, 0) attends nothing: output 0, and gradients 0 rather than NaN."""
    q, k, v = _leaves((1, 2, 1, 200, 64))
    out = mf.streaming_forward(q, k, v, 0, 0)
    assert (out == 0).all()
    grads, _ = _grads(out, q, k, v)
    assert all((g == 0).all() for g in grads)


def test_the_reference_check_catches_a_wrong_mask():
    """The gradient check fails when the op's mask is not the reference's (one window off)."""
    q, k, v = _leaves(SHAPES[0])
    grads, grad_out = _grads(mf.streaming_forward(q, k, v, 5, 70), q, k, v)
    with pytest.raises(AssertionError):
        assert_grads_close_to_reference(grads, q, k, v, reference.a_shape_mask(SHAPES[0][3], 5, 71), grad_out)


def test_dense_op_opcheck_with_autograd():
    from custom_ops.dense_causal import dense_causal_attention_backward_op, dense_causal_attention_op

    q, k, v = _leaves((1, 4, 2, 150, 64))
    torch.library.opcheck(dense_causal_attention_op, (q, k, v, 0.125))
    g = torch.randn_like(q)
    torch.library.opcheck(dense_causal_attention_backward_op, (g, q.detach(), k.detach(), v.detach(), 0.125))


@pytest.mark.parametrize("op", ["dense", "a_shape", "block_sparse"])
def test_backward_compiles_fullgraph(op):
    """Forward and backward inside one torch.compile(fullgraph=True) give the eager grads."""
    calls = {
        "dense": lambda q, k, v: mf.dense_attention(q, k, v),
        "a_shape": lambda q, k, v: mf.streaming_forward(q, k, v, 4, 100),
        "block_sparse": lambda q, k, v: mf.block_sparse_attention(q, k, v, 2),
    }

    def loss(q, k, v):
        return (calls[op](q, k, v) ** 2).sum()

    q, k, v = _leaves((1, 4, 2, 300, 64))
    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(q, k, v), (q, k, v))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _q_direction_dense(mask):
    """The blocks of a BlockMask read from its q-direction indices, as [B, H, Qb, KVb] bool."""
    from torch.nn.attention.flex_attention import _ordered_to_dense

    nq = mask.kv_num_blocks.shape[-1]
    partial = _ordered_to_dense(mask.q_num_blocks, mask.q_indices, nq).transpose(-1, -2)
    full = _ordered_to_dense(mask.full_q_num_blocks, mask.full_q_indices, nq).transpose(-1, -2)
    return partial.bool(), full.bool()


def test_grad_path_masks_carry_q_indices_of_the_same_blocks():
    """Masks built with for_backward=True (FlexAttention's backward walks them on CUDA) have the
    same kv blocks as the forward masks and q-direction indices that describe those blocks."""
    from torch.nn.attention.flex_attention import _ordered_to_dense

    from minference_flex.ops import flex

    q, k, _ = random_qkv(2, 4, 2, 777, 64)
    tiles, count = select_block_sparse_tiles(q, k, 3, 64)
    active = torch.tensor([True, False, True, True])
    padded = flex.flex_padded_length(777)
    pairs = [
        (flex._build_a_shape_block_mask(2, 4, padded, (5, 0, 9, 4), (70, 0, 300, 1), q.device, 128),
         flex._build_a_shape_block_mask(2, 4, padded, (5, 0, 9, 4), (70, 0, 300, 1), q.device, 128, for_backward=True)),
        (flex.block_sparse_block_mask(tiles, count, 777, 64, active),
         flex.block_sparse_block_mask(tiles, count, 777, 64, active, for_backward=True)),
    ]
    for plain, grad in pairs:
        assert plain.q_indices is None and grad.q_indices is not None
        assert torch.equal(grad.to_dense(), plain.to_dense())
        nkv = grad.kv_indices.shape[-1]
        assert nkv == -(-padded // grad.BLOCK_SIZE[1])  # width padded to the number of KV blocks
        partial, full = _q_direction_dense(grad)
        assert torch.equal(partial, _ordered_to_dense(grad.kv_num_blocks, grad.kv_indices, nkv).bool())
        assert torch.equal(full, _ordered_to_dense(grad.full_kv_num_blocks, grad.full_kv_indices, nkv).bool())


# vertical-slash: the forward's cases (tests/ops/test_vertical_slash_cpu.py), through the Triton backward
from tests.ops.test_vertical_slash_cpu import CASES, _indices  # noqa: E402


@pytest.mark.parametrize("case", CASES)
def test_vertical_slash_grads(case, nan_empty):
    b, h, hk, s, d, nv, ns = case
    q, k, v = _leaves((b, h, hk, s, d))
    v_idx, s_idx = _indices(b, h, s, nv, ns)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    grads, grad_out = _grads(out, q, k, v)
    assert_grads_close_to_reference(grads, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, s), grad_out)


@pytest.mark.slow
@pytest.mark.parametrize("on_bands", [False, True])
def test_vertical_slash_grads_on_every_band_kind(on_bands, nan_empty):
    """Pieces near the diagonal, whole and reaching below a clamped tile, packed distances,
    clamped tiles, columns de-duplicated against the bands (or the bands against the columns),
    column chunks before the tile; head_dim 128, GQA, batch 2."""
    from custom_ops.vertical_slash import build_vertical_slash_index, dedup_on_bands

    s, bs = 900, 64
    q, k, v = _leaves((2, 4, 2, s, 128))
    if on_bands:
        s_idx = torch.cat([torch.arange(150), torch.tensor([420, 460])]).expand(2, 4, -1)
        v_idx = torch.randint(0, s, (2, 4, 250))
    else:
        s_idx = torch.tensor([0, 5, 100, 130, 150, 333, 500, 505, 700, 730, 64, 200, 201]).expand(2, 4, -1)
        v_idx = torch.randint(0, s, (2, 4, 6))
    index = build_vertical_slash_index(v_idx, s_idx, s, bs)
    assert dedup_on_bands(index, s) == on_bands and index.clamped.bool().any()
    assert (index.dist_count > 0).any() and (index.piece_ranges[..., 1] > index.piece_ranges[..., 0]).any()
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    grads, grad_out = _grads(out, q, k, v)
    assert_grads_close_to_reference(grads, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, s), grad_out)


def test_vertical_slash_grads_fp16_block_32():
    q, k, v = _leaves((1, 2, 1, 257, 64), torch.float16)
    v_idx, s_idx = _indices(1, 2, 257, 40, 8)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, block_size=32, dense_fallback=False)
    grads, grad_out = _grads(out, q, k, v)
    mask = reference.vertical_slash_mask(v_idx, s_idx, 257, 32)
    assert_grads_close_to_reference(grads, q, k, v, mask, grad_out, floor=1e-3)


def test_vertical_slash_rows_without_keys_give_zero_grads():
    """Offsets >= 64 and no columns: the first tile's rows attend nothing (output 0); their
    dq is 0, not NaN, and the other rows' gradients still match the reference."""
    q, k, v = _leaves((1, 2, 1, 300, 64))
    v_idx = torch.empty(1, 2, 0, dtype=torch.long)
    s_idx = torch.tensor([70, 130]).expand(1, 2, -1)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    assert (out[:, :, :64] == 0).all()
    grads, grad_out = _grads(out, q, k, v)
    assert (grads[0][:, :, :64] == 0).all()
    assert_grads_close_to_reference(grads, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, 300), grad_out)


def test_vertical_slash_dense_fallback_grads():
    """Indices above the fallback threshold run dense attention, forward and backward."""
    q, k, v = _leaves((1, 4, 2, 640, 64))
    v_idx = torch.zeros(1, 4, 1, dtype=torch.long)
    s_idx = torch.arange(0, 640, 64).expand(1, 4, -1)
    out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)
    grads, grad_out = _grads(out, q, k, v)
    assert_grads_close_to_reference(grads, q, k, v, reference.causal_mask(640), grad_out)


@pytest.mark.slow
def test_vertical_slash_ops_without_a_saved_lse_recompute_it():
    """The plain op and the kernel-alone op differentiate too (their backward recomputes the
    log-sum-exp): same gradients as the op that saves it."""
    from custom_ops.vertical_slash import (
        build_vertical_slash_index,
        vertical_slash_attention,
        vertical_slash_sparse_attention_op,
        vertical_slash_sparse_attention_with_lse_op,
    )

    q, k, v = _leaves((2, 4, 2, 333, 64))
    v_idx, s_idx = _indices(2, 4, 333, 12, 20)
    args = (q, k, v, v_idx, s_idx, 64, 0.125, 2.0)
    grad_out = torch.randn_like(q)
    saved = torch.autograd.grad(vertical_slash_sparse_attention_with_lse_op(*args)[0], (q, k, v), grad_out)
    plain = torch.autograd.grad(vertical_slash_sparse_attention_op(*args), (q, k, v), grad_out)
    index = build_vertical_slash_index(v_idx, s_idx, 333, 64)
    alone = torch.autograd.grad(vertical_slash_attention(q, k, v, index, 64, 0.125), (q, k, v), grad_out)
    for a, b, c in zip(saved, plain, alone):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


@pytest.mark.slow
def test_vertical_slash_opcheck_with_autograd():
    from custom_ops.vertical_slash import (
        build_vertical_slash_index,
        vertical_slash_attention_backward_op,
        vertical_slash_attention_op,
        vertical_slash_sparse_attention_backward_op,
        vertical_slash_sparse_attention_op,
        vertical_slash_sparse_attention_with_lse_op,
    )

    q, k, v = _leaves((1, 2, 1, 150, 64))
    for nv, ns in ((9, 4), (3, 7)):  # both dedup sides
        v_idx, s_idx = _indices(1, 2, 150, nv, ns)
        for dense_above in (2.0, 0.0):  # the kernel, and the dense fallback
            args = (q, k, v, v_idx, s_idx, 64, 0.125, dense_above)
            torch.library.opcheck(vertical_slash_sparse_attention_op, args)
            torch.library.opcheck(vertical_slash_sparse_attention_with_lse_op, args)
            plain_args = tuple(t.detach() if torch.is_tensor(t) else t for t in args)
            out, lse = vertical_slash_sparse_attention_with_lse_op(*plain_args)
            detached = [t.detach() for t in (q, k, v)]
            torch.library.opcheck(vertical_slash_sparse_attention_backward_op,
                                  (torch.randn_like(out), *detached, v_idx, s_idx, out, lse, 64, 0.125, dense_above))
        index = build_vertical_slash_index(v_idx, s_idx, 150, 64)
        torch.library.opcheck(vertical_slash_attention_op, (q, k, v, *index, 64, 0.125))
        torch.library.opcheck(vertical_slash_attention_backward_op,
                              (torch.randn_like(q), *detached, torch.randn_like(q), *index, 64, 0.125))


def test_vertical_slash_backward_compiles_fullgraph():
    """Estimate, attend, loss and backward in one torch.compile(fullgraph=True): the eager
    gradients, and no recompile for new values at the same shapes."""
    def loss(q, k, v):
        return (mf.dynamic_vertical_slash_attention(q, k, v, 40, 110) ** 2).sum()

    q, k, v = _leaves((1, 4, 2, 300, 64))
    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled_loss = torch.compile(loss, fullgraph=True)
    compiled = torch.autograd.grad(compiled_loss(q, k, v), (q, k, v))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    q2, k2, v2 = _leaves((1, 4, 2, 300, 64))
    torch.autograd.grad(compiled_loss(q2, k2, v2), (q2, k2, v2))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before


def _block_sparse_op_grads(q, k, v, topk, active=None, block_size=64):
    """Output and gradients of the Triton training op (`custom_ops.block_sparse`) directly."""
    from custom_ops.block_sparse import block_sparse_attention_with_grad

    tiles, count = select_block_sparse_tiles(q.detach(), k.detach(), topk, block_size)
    out = block_sparse_attention_with_grad(q, k, v, tiles, count, block_size, q.shape[-1] ** -0.5, active)
    grads, grad_out = _grads(out, q, k, v)
    return out, grads, grad_out


@pytest.mark.parametrize("shape", SHAPES + [(2, 4, 2, 193, 64), (1, 2, 1, 64, 32)])
@pytest.mark.parametrize("topk", [1, 4])
def test_block_sparse_training_op_grads(shape, topk):
    """The Triton forward and backward that block-sparse trains through on CUDA, interpreted:
    output and q, k, v gradients against float64 autograd of the documented mask."""
    q, k, v = _leaves(shape)
    out, grads, grad_out = _block_sparse_op_grads(q, k, v, topk)
    mask = reference.block_sparse_mask(q.detach(), k.detach(), topk)
    assert_close_to_reference(out, q.detach(), k.detach(), v.detach(), mask)
    assert_grads_close_to_reference(grads, q, k, v, mask, grad_out)


@pytest.mark.parametrize("block_size, shape", [(16, (1, 4, 2, 70, 150, 64)), (32, (1, 2, 1, 200, 200, 64)),
                                               (128, (1, 4, 2, 300, 450, 64))])
def test_block_sparse_training_op_at_every_block_size(block_size, shape):
    q, k, v = _chunk_leaves(*shape)
    out, grads, grad_out = _block_sparse_op_grads(q, k, v, 3, block_size=block_size)
    mask = reference.block_sparse_mask(q.detach(), k.detach(), 3, block_size)
    assert_close_to_reference(out, q.detach(), k.detach(), v.detach(), mask)
    assert_grads_close_to_reference(grads, q, k, v, mask, grad_out)


@pytest.mark.parametrize("shape", [(2, 4, 2, 193, 449, 64), (1, 4, 1, 101, 300, 128), (2, 2, 2, 1, 333, 64)],
                         ids=["aligned", "unaligned", "decode"])
def test_block_sparse_training_op_at_the_end_of_the_keys(shape):
    """Queries at the end of the keys: own tiles n0 and, off a tile boundary, n0 + 1."""
    b, h, hk, sq, sk, d = shape
    q, k, v = _chunk_leaves(*shape)
    out, grads, grad_out = _block_sparse_op_grads(q, k, v, 3)
    mask = reference.block_sparse_mask(q.detach(), k.detach(), 3)
    assert_close_to_reference(out, q.detach(), k.detach(), v.detach(), mask)
    assert_grads_close_to_reference(grads, q, k, v, mask, grad_out)


def test_block_sparse_training_op_leaves_inactive_heads_out():
    """Heads flagged inactive (another pattern's) attend nothing: zero rows, zero gradients;
    the active heads match the reference."""
    q, k, v = _leaves((1, 4, 2, 300, 64))
    active = torch.tensor([True, False, True, False])
    out, grads, grad_out = _block_sparse_op_grads(q, k, v, 2, active)
    assert (out[:, ~active] == 0).all() and (grads[0][:, ~active] == 0).all()
    # heads 0 and 2 read kv heads 0 and 1: alone, they are a model without GQA
    qa = q.detach()[:, active].requires_grad_()
    mask = reference.block_sparse_mask(qa.detach(), k.detach(), 2)
    expected = reference_grads(qa, k, v, mask, grad_out[:, active])
    for got, want in zip((grads[0][:, active], grads[1], grads[2]), expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_invert_tiles_lists_the_query_tiles_that_chose_each_key_tile():
    from custom_ops.block_sparse import invert_tiles

    q, k = torch.randn(2, 3, 700, 64), torch.randn(2, 3, 900, 64)
    tiles, count = select_block_sparse_tiles(q, k, 4, 64)
    key_tiles = -(-900 // 64)
    inv = invert_tiles(tiles, count, key_tiles)
    for b in range(2):
        for h in range(3):
            for n in range(key_tiles):
                lo, hi = inv.starts[b, h, n].item(), inv.starts[b, h, n + 1].item()
                expected = [m for m in range(tiles.shape[2]) if n in tiles[b, h, m, : count[b, h, m]].tolist()]
                assert inv.choosers[b, h, lo:hi].tolist() == expected


def test_block_sparse_training_op_compiles_fullgraph():
    """Estimate, attend and differentiate in one graph: the ops trace with their fakes."""
    from custom_ops.block_sparse import block_sparse_attention_with_grad

    def loss(q, k, v):
        tiles, count = select_block_sparse_tiles(q.detach(), k.detach(), 2, 64)
        return block_sparse_attention_with_grad(q, k, v, tiles, count, 64, 0.125).square().sum()

    q, k, v = _leaves((1, 2, 1, 200, 64))
    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(q, k, v), (q, k, v))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# queries at the end of the keys (chunked pre-fill): q [B, H, Sq, D], k, v [B, Hkv, Sk, D]
CHUNKED = [  # batch, heads, kv_heads, Sq, Sk, head_dim
    (2, 4, 2, 193, 449, 64),  # offset 256: on a tile boundary
    (1, 4, 1, 101, 300, 128),  # offset 199: off
    (2, 2, 2, 1, 333, 64),  # one query
]
CHUNKED_IDS = ["aligned", "unaligned", "decode"]


def _chunk_leaves(b, h, hk, sq, sk, d):
    return [torch.randn(*shape).requires_grad_() for shape in ((b, h, sq, d), (b, hk, sk, d), (b, hk, sk, d))]


@pytest.mark.parametrize("shape", CHUNKED, ids=CHUNKED_IDS)
@pytest.mark.parametrize("op", ["dense", "a_shape", "block_sparse", "vertical_slash"])
def test_grads_at_the_end_of_the_keys(shape, op, nan_empty):
    b, h, hk, sq, sk, d = shape
    q, k, v = _chunk_leaves(*shape)
    if op == "dense":
        out, mask = mf.dense_attention(q, k, v), reference.causal_mask(sk, q_len=sq)
    elif op == "a_shape":
        out, mask = mf.streaming_forward(q, k, v, 5, 70), reference.a_shape_mask(sk, 5, 70, q_len=sq)
    elif op == "block_sparse":
        out = mf.block_sparse_attention(q, k, v, 2)
        mask = reference.block_sparse_mask(q.detach(), k.detach(), 2)
    else:
        v_idx = torch.randint(-3, sk + 5, (b, h, 9))
        s_idx = torch.cat([torch.arange(3).expand(b, h, 3), torch.randint(0, sk + 5, (b, h, 6))], -1)
        out = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
        mask = reference.vertical_slash_mask(v_idx, s_idx, sk, 64, q_len=sq)
    grads, grad_out = _grads(out, q, k, v)
    assert_grads_close_to_reference(grads, q, k, v, mask, grad_out)


def test_flex_attend_with_grads_rejects_key_range_passes():
    from minference_flex.ops import flex

    q, k, v = _leaves((1, 2, 1, 256, 64))
    tiles, count = select_block_sparse_tiles(q.detach(), k.detach(), 2, 64)
    masks = flex.block_sparse_key_split_masks(tiles, count, 256, 64, 2)
    with pytest.raises(ValueError, match="parts=1"):
        flex.flex_attend(q, k, v, masks, 0.125)


def test_band_windows_visit_every_key_tile_the_bands_reach():
    """Window k = m - n is listed wherever query tile m reads a key of key tile n through its
    bands (brute force over the documented semantics: offsets s in [0, Sk), bands [s+1, s+bs]
    of distances from the tile end e, keys >= bs where the tile is clamped), and only windows
    that meet the union of the bands are listed."""
    from custom_ops.vertical_slash import build_vertical_slash_index
    from custom_ops.vertical_slash.backward import band_windows

    bs = 64
    for sk, sq, ns in ((700, 700, 7), (700, 333, 7), (640, 64, 3), (900, 517, 40)):
        s_idx = torch.randint(-3, sk + 3, (2, 3, ns))
        v_idx = torch.randint(0, sk, (2, 3, 5))
        first, nblocks = sk - sq, -(-sq // bs)
        windows = band_windows(build_vertical_slash_index(v_idx, s_idx, sk, bs, sq), first, bs)
        for b in range(2):
            for h in range(3):
                offsets = [s for s in s_idx[b, h].tolist() if 0 <= s < sk]
                union = {u for s in offsets for u in range(s + 1, s + bs + 1)}
                needed = set()
                for m in range(nblocks):
                    e = first + (m + 1) * bs
                    lower = bs if any(e - bs < s < e for s in offsets) else 0
                    needed |= {m - j // bs for j in range(lower, min(e, sk)) if e - j in union}
                    if lower:  # the clamped keys [0, bs) are in key tile 0
                        needed.add(m)
                meeting = {k for k in range(-((first + bs - 1) // bs), nblocks)
                           if union & set(range(max(first + k * bs + 1, 1), first + (k + 1) * bs + 1))}
                listed = set(windows.windows[b, h, :windows.count[b, h].item()].tolist())
                assert needed <= listed <= meeting, (sk, sq, b, h)


def test_column_slots_map_each_key_to_its_column():
    from custom_ops.vertical_slash.backward import column_slots

    cols = torch.tensor([[[3, 9, 40, 50, 50]]])  # padded with 50 >= Sk
    slots = column_slots(cols, 41)
    assert slots.shape == (1, 1, 42)
    expected = torch.full((41,), -1, dtype=torch.int32)
    expected[3], expected[9], expected[40] = 0, 1, 2
    assert torch.equal(slots[0, 0, :41], expected)
