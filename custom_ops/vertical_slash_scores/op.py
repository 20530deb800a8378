"""`minference_flex::vertical_slash_scores`: the fused estimator sums as a torch op with a fake."""

from __future__ import annotations

import torch

from .kernel import launch_vertical_slash_scores


@torch.library.custom_op("minference_flex::vertical_slash_scores", mutates_args=())
def vertical_slash_scores_op(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, L, S] of the last L queries -> (vertical, slash) [B, H, S] fp32 (see
    `kernel.launch_vertical_slash_scores`)."""
    return launch_vertical_slash_scores(scores)


@vertical_slash_scores_op.register_fake
def _(scores):
    shape = (*scores.shape[:2], scores.shape[-1])
    return scores.new_empty(shape, dtype=torch.float32), scores.new_empty(shape, dtype=torch.float32)


def vertical_slash_scores(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the op: scores [B, H, L, S] -> (vertical, slash), each [B, H, S] fp32."""
    return vertical_slash_scores_op(scores)
