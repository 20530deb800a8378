"""Each pattern's exact boolean mask, built from the indices its kernel gets, and attention
through such a mask.

`Options(exact_masks=True)` runs a patched model's vertical-slash heads this way: the same
estimate, the same indices, the op's own dense fallback and the same tiles counted, but the
attention is a masked softmax over rows of query chunks instead of the Triton kernel. The
outputs equal the kernel's up to rounding (tests/ops/test_exact_masks_cpu.py); the cost is about
that of dense attention. It is the evaluation path on a CPU, where Triton runs in its
interpreter (about 50 s for a 1K-token pre-fill of a 30-layer model). A-shape and
block-sparse run FlexAttention, compiled on CPU too.

Masks follow the kernels' documented semantics (README, Kernel API); queries are the last Sq
of the Sk positions, query i at p = Sk - Sq + i.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


#: Query rows per chunk of `masked_attention` (its scores are [B, heads, ROWS, keys] fp32).
ROWS = 512

#: A mask given by rows: mask(r0, r1) -> [B, heads, r1 - r0, Sk] bool, rows r0..r1 of Sq.
RowMask = Callable[[int, int], torch.Tensor]


def causal(q_len: int, kv_len: int, device: torch.device, r0: int = 0, r1: int | None = None) -> torch.Tensor:
    """[r1 - r0, Sk] bool, query rows r0..r1 (default all Sq): key j <= p."""
    r1 = q_len if r1 is None else r1
    p = torch.arange(kv_len - q_len + r0, kv_len - q_len + r1, device=device)
    return torch.arange(kv_len, device=device)[None, :] <= p[:, None]


def vertical_slash_mask(
    v_idx: torch.Tensor, s_idx: torch.Tensor, q_len: int, kv_len: int, block_size: int = 64
) -> RowMask:
    """The mask of `vertical_slash_sparse_attention` for v_idx [B, H, NV] columns and s_idx
    [B, H, NS] offsets: query tile m ends at e = Sk - Sq + (m+1)*bs; an offset s < e covers
    keys [max(e - s, bs) - bs, max(e - s, bs)); plus the columns; causal. Indices outside
    [0, Sk) are ignored. Bands are summed as +1/-1 steps per query tile into [B, H, M, Sk], so
    no loop runs over tiles or offsets."""
    bsz, heads = v_idx.shape[:2]
    device = v_idx.device
    tiles = math.ceil(q_len / block_size)
    ends = kv_len - q_len + (torch.arange(tiles, device=device) + 1) * block_size  # [M]
    offsets = s_idx.long()[:, :, None, :]  # [B, H, 1, NS]
    live = (offsets >= 0) & (offsets < kv_len) & (offsets < ends[:, None])  # [B, H, M, NS]
    hi = torch.clamp(ends[:, None] - offsets, min=block_size)
    lo = (hi - block_size).clamp(max=kv_len)
    hi = hi.clamp(max=kv_len)
    steps = torch.zeros(bsz, heads, tiles, kv_len + 1, dtype=torch.int32, device=device)
    one = live.to(torch.int32)
    steps.scatter_add_(-1, torch.where(live, lo, kv_len), one)
    steps.scatter_add_(-1, torch.where(live, hi, kv_len), -one)
    bands = steps.cumsum(-1)[..., :kv_len] > 0  # [B, H, M, Sk]
    cols = v_idx.long()
    valid = (cols >= 0) & (cols < kv_len)
    columns = torch.zeros(bsz, heads, kv_len + 1, dtype=torch.bool, device=device)
    columns.scatter_(-1, torch.where(valid, cols, kv_len), True)
    columns = columns[:, :, None, :kv_len]

    def rows(r0: int, r1: int) -> torch.Tensor:
        tile_of = torch.arange(r0, r1, device=device) // block_size
        return (bands[:, :, tile_of] | columns) & causal(q_len, kv_len, device, r0, r1)

    return rows


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: RowMask, heads: Sequence[int], scale: float
) -> torch.Tensor:
    """Attention of the query heads `heads` of q [B, H, Sq, D] over k, v [B, Hkv, Sk, D]
    through `mask` (over those heads), in chunks of ROWS query rows whose scores are computed
    only up to the chunk's last causal key, in fp32; returns [B, len(heads), Sq, D] in q's
    dtype. Rows with no key give 0; a NaN or inf of the inputs reaches the rows that attend it."""
    group = q.shape[1] // k.shape[1]
    index = torch.tensor(list(heads), device=q.device)
    qh = q.index_select(1, index).float()
    kh = k.index_select(1, index // group).float()
    vh = v.index_select(1, index // group).float()
    q_len, kv_len = q.shape[2], k.shape[2]
    out = torch.empty(qh.shape, dtype=q.dtype, device=q.device)
    for r0 in range(0, q_len, ROWS):
        r1 = min(r0 + ROWS, q_len)
        keys = kv_len - q_len + r1  # causal: no later key is attended by these rows
        scores = (qh[:, :, r0:r1] @ kh[:, :, :keys].transpose(-1, -2)) * scale
        keep = mask(r0, r1)[..., :keys]
        probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
        probs = torch.where(keep.any(-1, keepdim=True), probs, 0.0)
        out[:, :, r0:r1] = (probs @ vh[:, :, :keys]).to(q.dtype)
    return out
