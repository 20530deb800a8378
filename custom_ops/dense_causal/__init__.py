"""Dense causal attention in row chunks of cuDNN calls, merged by log-sum-exp."""

from .op import (
    CHUNK_ROWS,
    MASK_ELEMENTS,
    chunk_bounds,
    chunked_causal_attention,
    dense_causal_attention,
    dense_causal_attention_backward,
    dense_causal_attention_backward_op,
    dense_causal_attention_op,
)

__all__ = [
    "CHUNK_ROWS",
    "MASK_ELEMENTS",
    "chunk_bounds",
    "chunked_causal_attention",
    "dense_causal_attention",
    "dense_causal_attention_backward",
    "dense_causal_attention_backward_op",
    "dense_causal_attention_op",
]
