"""`minference_flex::vertical_slash_scores`: the fused estimator sums as a torch op with a fake."""

from __future__ import annotations

import torch

from .kernel import launch_vertical_slash_scores


@torch.library.custom_op("minference_flex::vertical_slash_scores", mutates_args=())
def vertical_slash_scores_op(
    scores: torch.Tensor, columns: bool = True, diagonals: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, L, S] of the last L queries -> (vertical, slash) [B, H, S] fp32; either
    is [B, H, 0] when its flag is off (see `kernel.launch_vertical_slash_scores`)."""
    return launch_vertical_slash_scores(scores, columns, diagonals)


@vertical_slash_scores_op.register_fake
def _(scores, columns=True, diagonals=True):
    bsz, heads, _, seq_len = scores.shape
    return tuple(
        scores.new_empty((bsz, heads, seq_len if wanted else 0), dtype=torch.float32)
        for wanted in (columns, diagonals)
    )


def vertical_slash_scores(
    scores: torch.Tensor, columns: bool = True, diagonals: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the op: scores [B, H, L, S] -> (vertical, slash), each [B, H, S] fp32, or
    [B, H, 0] for a side not asked for."""
    return vertical_slash_scores_op(scores, columns, diagonals)
