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
"""

from __future__ import annotations

import math

import torch

from ..dense_causal import dense_causal_attention
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
    q_len, seq_len = q.shape[2], k.shape[2]
    nblocks = math.ceil(q_len / block_size)
    sorted_idx = sort_indices(v_idx, s_idx, seq_len, block_size, q_len)
    if (
        dense_above <= 1.0
        and fraction_bound(v_idx.shape[-1], s_idx.shape[-1], nblocks, block_size, seq_len - q_len) > dense_above
        and sorted_head_fractions(sorted_idx, block_size).mean().item() > dense_above
    ):
        return dense_causal_attention(q, k, v, scale)
    index = index_from_sorted(sorted_idx, seq_len, block_size)
    return launch_vertical_slash(q, k.contiguous(), v.contiguous(), index, block_size, scale)


@vertical_slash_sparse_attention_op.register_fake
def _(q, k, v, v_idx, s_idx, block_size, scale, dense_above):
    return q.new_empty(q.shape)


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
