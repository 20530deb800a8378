"""`minference_flex::vertical_slash_attention`: the kernel as a torch op with a fake kernel.

Registered with `torch.library.custom_op` so that `torch.compile(fullgraph=True)` traces
estimate-then-attend without a graph break on CUDA and on CPU (where Triton runs interpreted).
"""

from __future__ import annotations

import torch

from .index import VerticalSlashIndex
from .kernel import launch_vertical_slash


@torch.library.custom_op("minference_flex::vertical_slash_attention", mutates_args=())
def vertical_slash_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cols: torch.Tensor,
    col_count: torch.Tensor,
    piece_lo: torch.Tensor,
    piece_hi: torch.Tensor,
    piece_count: torch.Tensor,
    clamped: torch.Tensor,
    dedup: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Vertical-slash attention over a prepared `VerticalSlashIndex`; returns [B, H, S, D]."""
    index = VerticalSlashIndex(cols, col_count, piece_lo, piece_hi, piece_count, clamped, dedup)
    return launch_vertical_slash(
        q.contiguous(), k.contiguous(), v.contiguous(), index, block_size, scale
    )


@vertical_slash_attention_op.register_fake
def _(q, k, v, cols, col_count, piece_lo, piece_hi, piece_count, clamped, dedup, block_size, scale):
    return q.new_empty(q.shape)


def vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: VerticalSlashIndex,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Call the op with the fields of `index` (see `index.VerticalSlashIndex`)."""
    return vertical_slash_attention_op(q, k, v, *index, block_size, scale)
