"""Vertical and slash scores of the last queries: fused softmax + column and diagonal sums."""

from .op import vertical_slash_scores, vertical_slash_scores_op

__all__ = ["vertical_slash_scores", "vertical_slash_scores_op"]
