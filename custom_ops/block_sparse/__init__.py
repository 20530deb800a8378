"""Block-sparse attention for training: Triton forward and backward on the estimator's tiles."""

from .kernel import invert_tiles, launch_block_sparse_backward, launch_block_sparse_forward
from .op import block_sparse_attention_backward_op, block_sparse_attention_op, block_sparse_attention_with_grad

__all__ = [
    "block_sparse_attention_backward_op",
    "block_sparse_attention_op",
    "block_sparse_attention_with_grad",
    "invert_tiles",
    "launch_block_sparse_backward",
    "launch_block_sparse_forward",
]
