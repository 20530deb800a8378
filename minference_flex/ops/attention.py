"""Public sparse attention ops: validation, then dispatch to FlexAttention or the Triton op.

Layout: q [B, H, Sq, D], k and v [B, Hkv, Sk, D] with H % Hkv == 0 (GQA, K/V never
repeated) and Sq <= Sk: the queries are the last Sq of the Sk positions, query i at
p = Sk - Sq + i (causal at the bottom right; Sq == Sk is a whole pre-fill, Sq < Sk a chunk
of one over a KV cache, Sq == 1 a decode step); bf16/fp16 on CUDA, fp32/fp16 on CPU; any
lengths. Every op returns [B, H, Sq, D] in q's dtype. Rows that attend no key return 0; a
NaN or inf in q, k or v reaches every output row that attends it, as in SDPA.

Every op is differentiable in q, k and v (the indices are not): when autograd records and an
input requires grad, the ops run their training path (`custom_ops._autograd.needs_grad`):
- `dense_attention`: SDPA's backward, recomputing the forward;
- `streaming_forward`: FlexAttention's backward through the same attention on CUDA (masks
  with q-direction indices; see `flex`);
- `block_sparse_attention`: on CUDA a Triton forward and backward over the chosen tiles
  (`custom_ops.block_sparse`);
- both on CPU (FlexAttention has no backward there): SDPA with the mask's dense boolean form
  (`flex.masked_attention_from_block_mask`: Sq x Sk memory, for tests and short prompts);
- `vertical_slash_sparse_attention`: a Triton backward over the forward's work list, from
  the log-sum-exp the forward saves (or dense attention's backward where it ran dense).
GQA gradients of k and v are summed over each group of query heads.
"""

from __future__ import annotations

import torch

from custom_ops._autograd import needs_grad
from custom_ops.dense_causal import dense_causal_attention_op
from custom_ops.vertical_slash import (
    vertical_slash_sparse_attention_op,
    vertical_slash_sparse_attention_with_lse_op,
)

from minference_flex.ops import checks
from minference_flex.ops.estimate import estimate_vertical_slash, select_block_sparse_tiles
from minference_flex.ops.flex import a_shape_attend, block_sparse_flex

#: Above this fraction of dense causal key tiles, vertical-slash runs dense attention instead
#: (counted from the sorted indices: `custom_ops.vertical_slash.index.sorted_head_fractions`).
#: Measured on H100, the sparse kernel takes about 1.35-1.41 x fraction x cuDNN's dense time
#: at 128K (1.29-1.31 at 256K), and `dense_attention` 0.93 (0.87) of it: break-even near 0.67
#: at both lengths, so index sets past 0.65 run dense.
DENSE_FALLBACK_FRACTION = 0.65


def fallback_threshold(dense_fallback: bool) -> float:
    """The fraction of dense causal tiles above which the vertical-slash op runs dense:
    `DENSE_FALLBACK_FRACTION`, or 2.0 (never) without the fallback."""
    return DENSE_FALLBACK_FRACTION if dense_fallback else 2.0


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else checks.check_scale(scale)


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Dense causal attention, GQA-native; [B, H, Sq, D]: the query at p attends keys j <= p.
    On CUDA past `CHUNK_ROWS` (32K) rows or for Sq < Sk, row chunks of cuDNN calls merged by
    log-sum-exp (faster than one call: cuDNN's causal kernel slows past 64K); else SDPA
    (`custom_ops.dense_causal`)."""
    checks.check_qkv(q, k, v)
    return dense_causal_attention_op(q, k, v, _scale(q, scale))


def streaming_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    init_num: int,
    local_window_num: int,
    scale: float | None = None,
) -> torch.Tensor:
    """A-shape (StreamingLLM) attention: the query at p attends key j iff
    j <= p and (j < init_num or p - j < local_window_num).

    Args:
        q: [B, H, Sq, D]; k, v: [B, Hkv, Sk, D] (query i at p = Sk - Sq + i).
        init_num: sink tokens at the start (>= 0). local_window_num: local window (>= 0).
        scale: softmax scale, default 1/sqrt(D).
    Returns: [B, H, Sq, D]. Runs FlexAttention with a BlockMask built from a closed form.
    """
    checks.check_qkv(q, k, v)
    init_num = checks.check_nonnegative_int("init_num", init_num)
    local_window_num = checks.check_nonnegative_int("local_window_num", local_window_num)
    return a_shape_attend(q, k, v, init_num, local_window_num, _scale(q, scale))


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int,
    block_size: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """Block-sparse attention over the best-scoring tiles of each query tile.

    Query tiles are `block_size`-row tiles of q, key tiles absolute `block_size`-key tiles of
    k, both mean-pooled (a last partial tile is the mean of the tokens it has). Query tile m
    scores the key tiles whose first key is <= its first absolute position by the pooled dot
    product, keeps the `topk` best (all if fewer), plus every key tile holding one of its own
    positions (the diagonal tile), and attends causally inside the kept tiles.

    Args:
        q: [B, H, Sq, D]; k, v: [B, Hkv, Sk, D] (query i at Sk - Sq + i). topk: tiles per
            query tile, >= 1. block_size: tile size (16, 32, 64 or 128). scale: default
            1/sqrt(D).
    Returns: [B, H, Sq, D]. Runs FlexAttention with a BlockMask from the top-k tile indices;
    on CUDA, where one kv head's K and V outgrow L2 (`flex.KEY_SPLIT_BYTES`), in passes over
    ranges of key tiles merged by log-sum-exp (`flex.block_sparse_flex`).
    """
    checks.check_qkv(q, k, v)
    topk = checks.check_nonnegative_int("topk", topk, minimum=1)
    block_size = checks.check_block_size(block_size)
    tiles, count = select_block_sparse_tiles(q, k, topk, block_size)
    return block_sparse_flex(q, k, v, tiles, count, block_size, _scale(q, scale))


def vertical_slash_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    v_idx: torch.Tensor,
    s_idx: torch.Tensor,
    block_size: int = 64,
    scale: float | None = None,
    dense_fallback: bool = True,
) -> torch.Tensor:
    """Vertical-slash attention: a few key columns plus a few diagonals, per query head.

    Args:
        q: [B, H, Sq, D]; k, v: [B, Hkv, Sk, D] (query i at p = Sk - Sq + i).
        v_idx: [B, H, NV] absolute key positions (vertical columns).
        s_idx: [B, H, NS] diagonal offsets p - j >= 0 (slash lines).
            Order and duplicates don't matter; values outside [0, Sk) are ignored.
        block_size: query tile size bs (16, 32, 64 or 128).
        scale: softmax scale, default 1/sqrt(D).
        dense_fallback: when the pattern covers more than `DENSE_FALLBACK_FRACTION` of the
            dense causal key tiles of the Sq x Sk rectangle, run `dense_attention` instead
            (exact superset of the mask, and faster); the index is then not built.

    Semantics: query tile m holds q rows [m*bs, (m+1)*bs) and ends at the absolute position
    e = Sk - Sq + (m+1)*bs; each offset s < e covers the band of keys
    [max(e - s, bs) - bs, max(e - s, bs)); offsets s >= e cover nothing. The query at p
    attends key j iff j <= p and (j is in v_idx or in one of the bands of its tile): exactly
    the union of the bands, no extra keys.

    Returns: [B, H, Sq, D]. Runs the `minference_flex::vertical_slash_sparse_attention` op
    (index conversion and Triton kernel).
    """
    checks.check_qkv(q, k, v)
    checks.check_index("v_idx", v_idx, q)
    checks.check_index("s_idx", s_idx, q)
    block_size = checks.check_block_size(block_size)
    if not isinstance(dense_fallback, bool):
        raise TypeError(f"dense_fallback must be a bool, got {dense_fallback!r}")
    args = (q, k, v, v_idx, s_idx, block_size, _scale(q, scale), fallback_threshold(dense_fallback))
    if needs_grad(q, k, v):  # the forward that also saves the log-sum-exp for the backward
        return vertical_slash_sparse_attention_with_lse_op(*args)[0]
    return vertical_slash_sparse_attention_op(*args)


def dynamic_vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vertical_size: int,
    slash_size: int,
    last_q: int = 64,
    block_size: int = 64,
    scale: float | None = None,
    dense_fallback: bool = True,
) -> torch.Tensor:
    """Estimate each head's columns and diagonals (`estimate_vertical_slash`), then attend
    (`vertical_slash_sparse_attention`). Compiles with `torch.compile(fullgraph=True)`."""
    v_idx, s_idx = estimate_vertical_slash(q, k, vertical_size, slash_size, last_q, scale)
    return vertical_slash_sparse_attention(
        q, k, v, v_idx, s_idx, block_size, scale, dense_fallback
    )
