"""Gradients of every op on CPU (fp32; Triton kernels under the interpreter) against float64
autograd of masked attention with the mask built from each op's documented semantics."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from minference_flex import reference
from minference_flex.estimate import select_block_sparse_tiles
from tests.helpers import assert_grads_close_to_reference, random_qkv

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
    """Masks built with q_blocks=True (FlexAttention's backward walks them on CUDA) have the
    same kv blocks as the forward masks and q-direction indices that describe those blocks."""
    from torch.nn.attention.flex_attention import _ordered_to_dense

    from minference_flex import flex

    q, k, _ = random_qkv(2, 4, 2, 777, 64)
    tiles, count = select_block_sparse_tiles(q, k, 3, 64)
    active = torch.tensor([True, False, True, True])
    padded = flex.flex_padded_length(777)
    pairs = [
        (flex._build_a_shape_block_mask(2, 4, padded, (5, 0, 9, 4), (70, 0, 300, 1), q.device, 128),
         flex._build_a_shape_block_mask(2, 4, padded, (5, 0, 9, 4), (70, 0, 300, 1), q.device, 128, True)),
        (flex.block_sparse_block_mask(tiles, count, 777, 64, active),
         flex.block_sparse_block_mask(tiles, count, 777, 64, active, q_blocks=True)),
    ]
    for plain, grad in pairs:
        assert plain.q_indices is None and grad.q_indices is not None
        assert torch.equal(grad.to_dense(), plain.to_dense())
        nkv = grad.kv_indices.shape[-1]
        assert nkv == -(-padded // grad.BLOCK_SIZE[1])  # width padded to the number of KV blocks
        partial, full = _q_direction_dense(grad)
        assert torch.equal(partial, _ordered_to_dense(grad.kv_num_blocks, grad.kv_indices, nkv).bool())
        assert torch.equal(full, _ordered_to_dense(grad.full_kv_num_blocks, grad.full_kv_indices, nkv).bool())
