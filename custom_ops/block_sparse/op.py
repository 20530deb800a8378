"""The block-sparse training ops, with fake kernels.

- `minference_flex::block_sparse_attention`: the Triton forward over the tiles of
  `select_block_sparse_tiles`; returns the output and the rows' log-sum-exp (log2 units),
  which its autograd saves.
- `minference_flex::block_sparse_attention_backward`: the Triton backward (`kernel`).

What `minference_flex.ops.flex.block_sparse_flex` runs on CUDA when gradients are needed; the
inference path stays on FlexAttention.
"""

from __future__ import annotations

import torch

from .kernel import active_flags, launch_block_sparse_backward, launch_block_sparse_forward


@torch.library.custom_op("minference_flex::block_sparse_attention", mutates_args=())
def block_sparse_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tiles: torch.Tensor,
    count: torch.Tensor,
    active: torch.Tensor,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Sq, D], lse [B, H, Sq] fp32) of q (the last Sq of Sk positions) over k, v
    [B, Hkv, Sk, D] on tiles [B, H, Mq, W] / count [B, H, Mq] (`select_block_sparse_tiles`);
    active [H] int32 flags the heads that attend."""
    return launch_block_sparse_forward(q, k, v, tiles, count, block_size, scale, active)


@block_sparse_attention_op.register_fake
def _(q, k, v, tiles, count, active, block_size, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("minference_flex::block_sparse_attention_backward", mutates_args=())
def block_sparse_attention_backward_op(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    tiles: torch.Tensor,
    count: torch.Tensor,
    active: torch.Tensor,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `block_sparse_attention_op` for the output gradient grad."""
    return launch_block_sparse_backward(grad, q, k, v, out, lse, tiles, count, block_size, scale, active)


@block_sparse_attention_backward_op.register_fake
def _(grad, q, k, v, out, lse, tiles, count, active, block_size, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, tiles, count, active, block_size, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, tiles, count, active)
    ctx.args = (block_size, scale)


def _backward(ctx, grad, unused_lse_grad):
    q, k, v, out, lse, tiles, count, active = ctx.saved_tensors
    dq, dk, dv = block_sparse_attention_backward_op(grad, q, k, v, out, lse, tiles, count, active, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


block_sparse_attention_op.register_autograd(_backward, setup_context=_setup)


def block_sparse_attention_with_grad(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tiles: torch.Tensor,
    count: torch.Tensor,
    block_size: int,
    scale: float,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """The op's output [B, H, Sq, D]; active: [H] bool or int flags (None: every head)."""
    return block_sparse_attention_op(q, k, v, tiles, count, active_flags(q, active), block_size, scale)[0]
