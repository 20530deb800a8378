"""The vertical-slash torch ops, with fake kernels.

- `minference_flex::vertical_slash_sparse_attention`: index conversion and kernel from v_idx
  and s_idx, or dense attention (`custom_ops.dense_causal`) when the pattern is near dense.
  What `minference_flex` calls.
- `minference_flex::vertical_slash_attention`: the kernel alone, over a prepared
  `VerticalSlashIndex` (`build_vertical_slash_index`), for callers that reuse or time one.

Registered with `torch.library.custom_op` so that `torch.compile(fullgraph=True)` traces
estimate-then-attend without a graph break on CUDA and on CPU (where Triton runs interpreted).
The dense fallback is decided inside the op: it reads one device scalar, which the compiler
never sees, so no data-dependent branch enters the graph; and only where the shapes allow
more than the threshold (`fraction_bound`), so budgets that are sparse at this length
never sync with the host. The scalar comes from the sorted indices
(`sorted_head_fractions`), so a fallback skips the rest of the index build.

Autograd (gradients to q, k and v; the indices are not differentiable):
- `minference_flex::vertical_slash_sparse_attention_with_lse`: the same forward that also
  returns the rows' log-sum-exp, which its autograd saves. What `minference_flex` calls when
  gradients are needed.
- `minference_flex::vertical_slash_sparse_attention_backward`: rebuilds the index from v_idx
  and s_idx (and takes the same dense-fallback decision), then runs the Triton backward
  (`backward.launch_vertical_slash_backward`), or dense attention's backward where the
  forward ran dense. The two ops above without a saved log-sum-exp, and the kernel-alone op,
  recompute it with one more forward.
"""

from __future__ import annotations

import math

import torch

from ..dense_causal import dense_causal_attention, dense_causal_attention_backward
from .backward import launch_vertical_slash_backward
from .index import (
    VerticalSlashIndex,
    fraction_bound,
    index_from_sorted,
    sort_indices,
    sorted_head_fractions,
)
from .kernel import launch_vertical_slash


@torch.library.custom_op("minference_flex::vertical_slash_sparse_attention", mutates_args=())
def vertical_slash_sparse_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    v_idx: torch.Tensor,
    s_idx: torch.Tensor,
    block_size: int,
    scale: float,
    dense_above: float,
) -> torch.Tensor:
    """Vertical-slash attention of q [B, H, Sq, D] (the last Sq of Sk positions) over k, v
    [B, Hkv, Sk, D] from v_idx [B, H, NV] and s_idx [B, H, NS]; [B, H, Sq, D].

    When the pattern's key tiles exceed `dense_above` of the dense causal ones of the Sq x Sk
    rectangle (`sorted_head_fractions`, averaged over batch and heads; within two tiles per
    query tile of what the kernel would compute), dense attention runs instead: a superset
    of the mask. Pass a value > 1 to never fall back.
    """
    index = sparse_index(q, k, v_idx, s_idx, block_size, dense_above)
    if index is None:
        return dense_causal_attention(q, k, v, scale)
    return launch_vertical_slash(q, k.contiguous(), v.contiguous(), index, block_size, scale)


def sparse_index(
    q: torch.Tensor, k: torch.Tensor, v_idx: torch.Tensor, s_idx: torch.Tensor, block_size: int,
    dense_above: float,
) -> VerticalSlashIndex | None:
    """The kernel's index, or None when the pattern goes dense (see the op's docstring); what
    the op runs, so callers that count its work (`minference_flex.metrics.tile_count`) see its choice."""
    q_len, seq_len = q.shape[2], k.shape[2]
    nblocks = math.ceil(q_len / block_size)
    sorted_idx = sort_indices(v_idx, s_idx, seq_len, block_size, q_len)
    if (
        dense_above <= 1.0
        and fraction_bound(v_idx.shape[-1], s_idx.shape[-1], nblocks, block_size, seq_len - q_len) > dense_above
        and sorted_head_fractions(sorted_idx, block_size).mean().item() > dense_above
    ):
        return None
    return index_from_sorted(sorted_idx, seq_len, block_size)


@vertical_slash_sparse_attention_op.register_fake
def _(q, k, v, v_idx, s_idx, block_size, scale, dense_above):
    return q.new_empty(q.shape)


@torch.library.custom_op("minference_flex::vertical_slash_sparse_attention_with_lse", mutates_args=())
def vertical_slash_sparse_attention_with_lse_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    v_idx: torch.Tensor,
    s_idx: torch.Tensor,
    block_size: int,
    scale: float,
    dense_above: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`vertical_slash_sparse_attention_op` that also returns lse [B, H, S] fp32: each row's
    log-sum-exp of its scaled scores in log2 units (+inf for a row without keys), not
    differentiable; zeros where the pattern ran dense (its backward does not read it)."""
    index = sparse_index(q, k, v_idx, s_idx, block_size, dense_above)
    lse = torch.zeros(q.shape[:3], dtype=torch.float32, device=q.device)
    if index is None:
        return dense_causal_attention(q, k, v, scale), lse
    out = launch_vertical_slash(q, k.contiguous(), v.contiguous(), index, block_size, scale, lse=lse)
    return out, lse


@vertical_slash_sparse_attention_with_lse_op.register_fake
def _(q, k, v, v_idx, s_idx, block_size, scale, dense_above):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


def _kernel_backward(grad, q, k, v, out, lse, index, block_size, scale):
    """The Triton backward over `index`; an empty `lse` is recomputed by the forward kernel."""
    if lse.numel() == 0:
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        launch_vertical_slash(q, k.contiguous(), v.contiguous(), index, block_size, scale, lse=lse)
    return launch_vertical_slash_backward(grad, q, k, v, out, lse, index, block_size, scale)


@torch.library.custom_op("minference_flex::vertical_slash_sparse_attention_backward", mutates_args=())
def vertical_slash_sparse_attention_backward_op(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    v_idx: torch.Tensor,
    s_idx: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    block_size: int,
    scale: float,
    dense_above: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `vertical_slash_sparse_attention_op` for the output gradient grad
    [B, H, S, D], given its output and lse (from the `_with_lse` op; an empty tensor to
    recompute it). The index and the dense-fallback decision are rebuilt from v_idx, s_idx."""
    index = sparse_index(q, k, v_idx, s_idx, block_size, dense_above)
    if index is None:
        return dense_causal_attention_backward(grad, q, k, v, scale)
    return _kernel_backward(grad, q, k, v, out, lse, index, block_size, scale)


@vertical_slash_sparse_attention_backward_op.register_fake
def _(grad, q, k, v, v_idx, s_idx, out, lse, block_size, scale, dense_above):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_sparse(ctx, inputs, output):
    q, k, v, v_idx, s_idx, block_size, scale, dense_above = inputs
    if isinstance(output, tuple):
        out, lse = output
        ctx.mark_non_differentiable(lse)
    else:
        out, lse = output, q.new_empty(0, dtype=torch.float32)
    ctx.save_for_backward(q, k, v, v_idx, s_idx, out, lse)
    ctx.args = (block_size, scale, dense_above)


def _backward_sparse(ctx, grad, *unused_lse_grad):
    q, k, v, v_idx, s_idx, out, lse = ctx.saved_tensors
    dq, dk, dv = vertical_slash_sparse_attention_backward_op(grad, q, k, v, v_idx, s_idx, out, lse, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


vertical_slash_sparse_attention_op.register_autograd(_backward_sparse, setup_context=_setup_sparse)
vertical_slash_sparse_attention_with_lse_op.register_autograd(_backward_sparse, setup_context=_setup_sparse)


@torch.library.custom_op("minference_flex::vertical_slash_attention", mutates_args=())
def vertical_slash_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cols: torch.Tensor,
    col_count: torch.Tensor,
    piece_lo: torch.Tensor,
    piece_ranges: torch.Tensor,
    dists: torch.Tensor,
    dist_count: torch.Tensor,
    clamped: torch.Tensor,
    dedup: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """The kernel over a prepared `VerticalSlashIndex` (its fields in order, built for these
    Sq and Sk); [B, H, Sq, D]."""
    index = VerticalSlashIndex(
        cols, col_count, piece_lo, piece_ranges, dists, dist_count, clamped, dedup
    )
    return launch_vertical_slash(q, k.contiguous(), v.contiguous(), index, block_size, scale)


@vertical_slash_attention_op.register_fake
def _(q, k, v, cols, col_count, piece_lo, piece_ranges, dists, dist_count, clamped, dedup,
      block_size, scale):
    return q.new_empty(q.shape)


@torch.library.custom_op("minference_flex::vertical_slash_attention_backward", mutates_args=())
def vertical_slash_attention_backward_op(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    cols: torch.Tensor,
    col_count: torch.Tensor,
    piece_lo: torch.Tensor,
    piece_ranges: torch.Tensor,
    dists: torch.Tensor,
    dist_count: torch.Tensor,
    clamped: torch.Tensor,
    dedup: torch.Tensor,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `vertical_slash_attention_op` (log-sum-exp recomputed)."""
    index = VerticalSlashIndex(cols, col_count, piece_lo, piece_ranges, dists, dist_count, clamped, dedup)
    return _kernel_backward(grad, q, k, v, out, q.new_empty(0, dtype=torch.float32), index, block_size, scale)


@vertical_slash_attention_backward_op.register_fake
def _(grad, q, k, v, out, cols, col_count, piece_lo, piece_ranges, dists, dist_count, clamped, dedup,
      block_size, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_kernel(ctx, inputs, output):
    q, k, v, *index = inputs[:11]
    ctx.save_for_backward(q, k, v, output, *index)
    ctx.args = inputs[11:]


def _backward_kernel(ctx, grad):
    q, k, v, out, *index = ctx.saved_tensors
    dq, dk, dv = vertical_slash_attention_backward_op(grad, q, k, v, out, *index, *ctx.args)
    return (dq, dk, dv) + (None,) * 10


vertical_slash_attention_op.register_autograd(_backward_kernel, setup_context=_setup_kernel)


def vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: VerticalSlashIndex,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """The kernel alone: call the op with the fields of `index` (see `index.VerticalSlashIndex`)."""
    return vertical_slash_attention_op(q, k, v, *index, block_size, scale)
