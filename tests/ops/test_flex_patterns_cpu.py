"""A-shape and block-sparse (FlexAttention, compiled by Inductor on CPU) against references."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import reference
from minference_flex.ops.estimate import select_block_sparse_tiles
from tests.helpers import assert_close_to_reference, random_qkv

SHAPES = [  # batch, heads, kv_heads, seq_len, head_dim
    (2, 4, 2, 333, 64),
    (1, 2, 1, 517, 128),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("init, local", [(5, 70), (0, 200), (130, 1)])
def test_streaming_forward_matches_reference(shape, init, local):
    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d)
    out = mf.streaming_forward(q, k, v, init, local)
    assert_close_to_reference(out, q, k, v, reference.a_shape_mask(s, init, local))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("topk", [1, 3])
def test_block_sparse_matches_reference(shape, topk):
    b, h, hk, s, d = shape
    q, k, v = random_qkv(b, h, hk, s, d)
    out = mf.block_sparse_attention(q, k, v, topk)
    assert_close_to_reference(out, q, k, v, reference.block_sparse_mask(q, k, topk))


def test_block_tile_selection_matches_reference():
    q, k, _ = random_qkv(2, 4, 2, 1000, 64)
    tiles, count = select_block_sparse_tiles(q, k, 4, 64)
    ref = reference.block_sparse_mask(q, k, 4)[:, :, ::64, ::64]
    nblocks = ref.shape[-1]
    chosen = torch.zeros(*ref.shape[:-1], nblocks + 1, dtype=torch.bool)
    valid = torch.arange(tiles.shape[-1]) < count[..., None]
    chosen.scatter_(-1, torch.where(valid, tiles.long(), nblocks), True)
    chosen = chosen[..., :nblocks] | torch.eye(nblocks, dtype=torch.bool)
    assert torch.equal(chosen, ref)


def test_full_budgets_equal_dense():
    q, k, v = random_qkv(1, 4, 2, 300, 64)
    dense = reference.masked_attention(q, k, v, reference.causal_mask(300))
    for out in (mf.streaming_forward(q, k, v, 0, 300), mf.block_sparse_attention(q, k, v, 10**6)):
        assert (out.double() - dense).abs().max() < 1e-5


def test_new_lengths_do_not_recompile_every_call():
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for s in (640, 777, 901, 1029):
        q, k, v = random_qkv(1, 2, 1, s, 64)
        out = mf.streaming_forward(q, k, v, 4, 100)
        assert_close_to_reference(out, q, k, v, reference.a_shape_mask(s, 4, 100))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before <= 2


def test_compiles_inside_a_users_fullgraph_region():
    q, k, v = random_qkv(1, 2, 1, 256, 64)
    fn = torch.compile(lambda q, k, v: mf.block_sparse_attention(q, k, v, 2), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v), mf.block_sparse_attention(q, k, v, 2))


def _flex_from_block_mask(q, k, v, block_mask, scale, enable_gqa, kernel_options, return_lse):
    """FlexAttention's semantics in float64 from a BlockMask's blocks and mask_mod (eager flex
    on CPU evaluates mask_mod everywhere and ignores the blocks): (out, natural lse)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    bq, bkv = block_mask.BLOCK_SIZE
    blocks = block_mask.to_dense().bool()
    allowed = blocks.repeat_interleave(bq, -2).repeat_interleave(bkv, -1)[..., :q_len, :kv_len]
    allowed = allowed & block_mask.mask_mod(0, 0, torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :])
    out, lse = reference.masked_attention(q, k, v, allowed, scale, return_lse=True)
    return out.to(q.dtype), lse.float()


@pytest.mark.parametrize("seq_len, parts", [(1000, 2), (1537, 3), (777, 4), (300, 5)])
def test_key_split_passes_attend_what_one_mask_does(monkeypatch, seq_len, parts):
    """The passes of `block_sparse_key_split_masks` (each over its queries and key range),
    merged by `_flex_key_split`, equal block-sparse attention; Flex itself is stood in for by
    its semantics, as Inductor's CPU template returns no log-sum-exp. Some heads inactive."""
    from minference_flex.ops import flex

    monkeypatch.setattr(flex, "flex_attention", _flex_from_block_mask)
    q, k, v = random_qkv(2, 4, 2, seq_len, 64)
    tiles, count = select_block_sparse_tiles(q, k, 3, 64)
    active = torch.tensor([True, False, True, True])
    masks = flex.block_sparse_key_split_masks(tiles, count, seq_len, 64, parts, active)
    assert 1 < len(masks) <= parts
    padded = flex.flex_padded_length(seq_len)
    pad = (0, 0, 0, padded - seq_len)
    # as flex_attend hands them over on CUDA: padded, in [.., n, FLEX_ALIGN, ..] blocks
    qp, kp, vp = (torch.nn.functional.pad(t, pad).unflatten(2, (-1, flex.FLEX_ALIGN)) for t in (q, k, v))
    out = flex._flex_key_split(qp, kp, vp, masks, 64**-0.5, True, None)[:, :, :seq_len]
    ref = reference.masked_attention(q, k, v, reference.block_sparse_mask(q, k, 3))
    assert (out[:, active].double() - ref[:, active]).abs().max() < 1e-5
    # inactive heads get no blocks in any pass: their rows are never written by a merge
    one = flex.block_sparse_block_mask(tiles, count, seq_len, 64, active).to_dense()
    union = torch.zeros_like(one)
    for mask in masks:
        dense = mask.to_dense()
        union[:, :, one.shape[2] - dense.shape[2]:] += dense
    assert torch.equal(union, one)


def test_key_range_passes_on_cpu_raise():
    from minference_flex.ops import flex

    q, k, v = random_qkv(1, 2, 1, 256, 64)
    tiles, count = select_block_sparse_tiles(q, k, 2, 64)
    masks = flex.block_sparse_key_split_masks(tiles, count, 256, 64, 2)
    with pytest.raises(ValueError, match="CUDA"):
        flex.flex_attend(q, k, v, masks, 0.125)


def test_flex_never_runs_eagerly_past_the_recompile_limit():
    """Past Dynamo's recompile limit FlexAttention would run eagerly, which ignores the block
    lists: block-sparse would be dense causal attention. It raises and names the fix instead."""
    with torch._dynamo.config.patch(recompile_limit=1), pytest.raises(RuntimeError, match="recompile_limit = 64"):
        for length in (200, 333):  # a variant no other test compiles: its second length is past the limit
            mf.block_sparse_attention(*random_qkv(1, 2, 1, length, 40), 1)


@pytest.mark.parametrize("switch", ["TORCHDYNAMO_DISABLE", "TORCH_COMPILE_DISABLE"])
def test_flex_with_torch_compile_switched_off_is_named(monkeypatch, switch):
    if switch == "TORCHDYNAMO_DISABLE":
        monkeypatch.setenv(switch, "1")
    q, k, v = random_qkv(1, 2, 1, 200, 64)
    # what TORCH_COMPILE_DISABLE=1 sets at import
    with torch._dynamo.config.patch(disable=switch == "TORCH_COMPILE_DISABLE"):
        with pytest.raises(RuntimeError, match="torch.compile is off"):
            mf.block_sparse_attention(q, k, v, 1)
        with pytest.raises(RuntimeError, match="torch.compile is off"):
            mf.streaming_forward(q, k, v, 4, 64)
        assert torch.isfinite(mf.dynamic_vertical_slash_attention(q, k, v, 30, 64)).all()
