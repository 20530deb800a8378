"""`minference_flex::top_tiles`: block-sparse tile selection as a torch op with a fake."""

from __future__ import annotations

import torch

from .kernel import launch_top_tiles


@torch.library.custom_op("minference_flex::top_tiles", mutates_args=())
def top_tiles_op(scores: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, M, M] -> (tiles [B, H, M, min(topk, M)], count [B, H, M]), int32 (see
    `kernel.launch_top_tiles`)."""
    return launch_top_tiles(scores, topk)


@top_tiles_op.register_fake
def _(scores, topk):
    bsz, heads, nblocks, _ = scores.shape
    tiles = scores.new_empty((bsz, heads, nblocks, min(topk, nblocks)), dtype=torch.int32)
    return tiles, scores.new_empty((bsz, heads, nblocks), dtype=torch.int32)


def top_tiles(scores: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the op: the best `topk` key tiles n < m of each query tile m, ascending."""
    return top_tiles_op(scores, topk)
