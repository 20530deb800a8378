"""Vertical-slash sparse attention: index conversion, Triton kernel and its torch ops."""

from .index import (
    VerticalSlashIndex,
    build_vertical_slash_index,
    computed_fraction,
    dedup_on_bands,
    fraction_bound,
    head_fractions,
    head_tiles,
)
from .op import (
    sparse_index,
    vertical_slash_attention,
    vertical_slash_attention_backward_op,
    vertical_slash_attention_op,
    vertical_slash_sparse_attention_backward_op,
    vertical_slash_sparse_attention_op,
    vertical_slash_sparse_attention_with_lse_op,
)

__all__ = [
    "VerticalSlashIndex",
    "build_vertical_slash_index",
    "computed_fraction",
    "dedup_on_bands",
    "fraction_bound",
    "head_fractions",
    "head_tiles",
    "sparse_index",
    "vertical_slash_attention",
    "vertical_slash_attention_backward_op",
    "vertical_slash_attention_op",
    "vertical_slash_sparse_attention_backward_op",
    "vertical_slash_sparse_attention_op",
    "vertical_slash_sparse_attention_with_lse_op",
]
