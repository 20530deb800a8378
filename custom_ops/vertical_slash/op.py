"""`minference_flex::vertical_slash_attention`: the kernel as a torch op with a fake kernel.

Registered with `torch.library.custom_op` so that `torch.compile(fullgraph=True)` traces
estimate-then-attend without a graph break on CUDA and on CPU (where Triton runs interpreted).
The dense fallback is decided inside the op: it reads one device scalar (the computed
fraction), which the compiler never sees, so no data-dependent branch enters the graph; and
only where the index's shapes allow more than the threshold (`index.fraction_bound`), so
budgets that are sparse at this length never sync with the host.
"""

from __future__ import annotations

import torch

from .index import VerticalSlashIndex, computed_fraction, fraction_bound
from .kernel import launch_vertical_slash


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
    dense_above: float,
) -> torch.Tensor:
    """Vertical-slash attention over a prepared `VerticalSlashIndex`; returns [B, H, S, D].

    When the index computes more than `dense_above` of the dense causal key tiles, dense
    SDPA runs instead (a superset of the mask; pass a value > 1 to never fall back).
    """
    index = VerticalSlashIndex(
        cols, col_count, piece_lo, piece_ranges, dists, dist_count, clamped, dedup
    )
    if (
        dense_above <= 1.0
        and fraction_bound(index, block_size) > dense_above
        and computed_fraction(index, block_size).item() > dense_above
    ):
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.contiguous()
    return launch_vertical_slash(q, k.contiguous(), v.contiguous(), index, block_size, scale)


@vertical_slash_attention_op.register_fake
def _(q, k, v, cols, col_count, piece_lo, piece_ranges, dists, dist_count, clamped, dedup,
      block_size, scale, dense_above):
    return q.new_empty(q.shape)


def vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: VerticalSlashIndex,
    block_size: int,
    scale: float,
    dense_above: float = 2.0,
) -> torch.Tensor:
    """Call the op with the fields of `index` (see `index.VerticalSlashIndex`)."""
    return vertical_slash_attention_op(q, k, v, *index, block_size, scale, dense_above)
