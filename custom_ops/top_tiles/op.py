"""`minference_flex::top_tiles`: block-sparse tile selection as a torch op with a fake."""

from __future__ import annotations

import torch

from .kernel import launch_top_tiles


@torch.library.custom_op("minference_flex::top_tiles", mutates_args=())
def top_tiles_op(scores: torch.Tensor, topk: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, Mq, Mk] -> (tiles [B, H, Mq, min(topk, Mk)], count [B, H, Mq]), int32 (see
    `kernel.launch_top_tiles`)."""
    return launch_top_tiles(scores, topk, shift)


@top_tiles_op.register_fake
def _(scores, topk, shift):
    bsz, heads, q_blocks, nblocks = scores.shape
    tiles = scores.new_empty((bsz, heads, q_blocks, min(topk, nblocks)), dtype=torch.int32)
    return tiles, scores.new_empty((bsz, heads, q_blocks), dtype=torch.int32)


def top_tiles(scores: torch.Tensor, topk: int, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the op: the best `topk` key tiles n < m + shift of each query tile m, ascending."""
    return top_tiles_op(scores, topk, shift)
