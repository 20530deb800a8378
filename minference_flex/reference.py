"""Plain PyTorch references: dense boolean masks built straight from the documented semantics.

These build S x S masks and are meant for tests, the pattern search on short prompts and
anyone who wants to check a kernel; never for long sequences. Masks are [B, H, S, S] bool with
mask[b, h, i, j] True iff query i attends key j.
"""

from __future__ import annotations

import math

import torch


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[S, S] bool: j <= i."""
    pos = torch.arange(seq_len, device=device)
    return pos[None, :] <= pos[:, None]


def a_shape_mask(
    seq_len: int, init_num: int, local_window_num: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """[S, S] bool: j <= i and (j < init_num or i - j < local_window_num)."""
    pos = torch.arange(seq_len, device=device)
    i, j = pos[:, None], pos[None, :]
    return (j <= i) & ((j < init_num) | (i - j < local_window_num))


def vertical_slash_mask(
    v_idx: torch.Tensor, s_idx: torch.Tensor, seq_len: int, block_size: int = 64
) -> torch.Tensor:
    """[B, H, S, S] bool mask of `vertical_slash_sparse_attention` (see its docstring).

    Query tile m holds rows [m*bs, (m+1)*bs); with e = (m+1)*bs each slash offset s < e covers
    keys [max(e - s, bs) - bs, max(e - s, bs)); query i attends key j iff j <= i and (j is a
    vertical index or j is in a band of i's tile). Indices outside [0, S) are ignored.
    """
    bsz, heads = v_idx.shape[:2]
    device = v_idx.device
    pos = torch.arange(seq_len, device=device)
    mask = torch.zeros(bsz, heads, seq_len, seq_len, dtype=torch.bool, device=device)
    for b in range(bsz):
        for h in range(heads):
            cols = v_idx[b, h].long()
            cols = cols[(cols >= 0) & (cols < seq_len)]
            column_keys = torch.zeros(seq_len, dtype=torch.bool, device=device)
            column_keys[cols] = True
            offsets = s_idx[b, h].long()
            offsets = offsets[(offsets >= 0) & (offsets < seq_len)]
            for m in range(math.ceil(seq_len / block_size)):
                end = (m + 1) * block_size
                live = offsets[offsets < end]
                band_hi = torch.clamp(end - live, min=block_size)
                band_lo = band_hi - block_size
                in_band = ((pos[None, :] >= band_lo[:, None]) & (pos[None, :] < band_hi[:, None])).any(0)
                rows = slice(m * block_size, min(end, seq_len))
                mask[b, h, rows] = in_band | column_keys
    return mask & causal_mask(seq_len, device)


def block_sparse_mask(
    q: torch.Tensor, k: torch.Tensor, topk: int, block_size: int = 64
) -> torch.Tensor:
    """[B, H, S, S] bool mask of `block_sparse_attention` (see its docstring), in float64.

    Tiles are mean-pooled (a last partial tile is the mean of its tokens); query tile m scores
    key tiles n <= m by the pooled dot product, keeps the `topk` best plus tile m itself, and
    attends causally inside them.
    """
    bsz, heads, seq_len, _ = q.shape
    nblocks = math.ceil(seq_len / block_size)
    tile_of = torch.arange(seq_len, device=q.device) // block_size
    scores = block_sparse_scores(q, k, block_size)
    tiles = torch.arange(nblocks, device=q.device)
    best = scores.topk(min(topk, nblocks), dim=-1).indices
    keep = torch.zeros(bsz, heads, nblocks, nblocks, dtype=torch.bool, device=q.device)
    keep.scatter_(-1, best, True)
    keep &= tiles[None, :] <= tiles[:, None]
    keep |= torch.eye(nblocks, dtype=torch.bool, device=q.device)
    mask = keep[:, :, tile_of][:, :, :, tile_of]
    return mask & causal_mask(seq_len, q.device)


def block_sparse_scores(q: torch.Tensor, k: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Float64 pooled tile scores [B, H, M, M] of `block_sparse_attention`, -inf above the
    diagonal (tiles are mean-pooled; a last partial tile is the mean of its tokens)."""
    seq_len = q.shape[2]
    group = q.shape[1] // k.shape[1]
    nblocks = math.ceil(seq_len / block_size)
    tile_of = torch.arange(seq_len, device=q.device) // block_size

    def pool(x: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(*x.shape[:2], nblocks, x.shape[-1], dtype=torch.float64, device=x.device)
        sums.index_add_(2, tile_of, x.double())
        counts = torch.bincount(tile_of, minlength=nblocks).double()
        return sums / counts[:, None]

    scores = pool(q) @ pool(k).repeat_interleave(group, dim=1).transpose(-1, -2)
    tiles = torch.arange(nblocks, device=q.device)
    return scores.masked_fill(tiles[None, :] > tiles[:, None], float("-inf"))


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float64 softmax(q k^T * scale) v over the keys `mask` allows; [B, H, S, D].

    mask broadcasts to [B, H, S, S]; k and v may have fewer heads (GQA, repeated here). Rows
    with no allowed key give 0. With return_lse also the natural log-sum-exp of the allowed
    scaled scores, [B, H, S] (-inf for rows with no allowed key).
    """
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v
    return (out, torch.logsumexp(scores, dim=-1)) if return_lse else out


def estimate_vertical_slash_scores(
    q: torch.Tensor, k: torch.Tensor, last_q: int = 64, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 vertical and slash scores of the last `last_q` queries, each [B, H, S].

    vertical[j] = sum over the last queries i of p(i, j); slash[s] = sum over them of p(i, i - s).
    """
    seq_len = q.shape[2]
    last_q = min(last_q, seq_len)
    group = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kk = k.double().repeat_interleave(group, dim=1)
    rows = torch.arange(seq_len - last_q, seq_len, device=q.device)
    cols = torch.arange(seq_len, device=q.device)
    scores = (q[:, :, -last_q:].double() @ kk.transpose(-1, -2)) * scale
    scores = scores.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    vertical = probs.sum(-2)
    slash = torch.zeros_like(vertical)
    offsets = (rows[:, None] - cols[None, :]).clamp(min=0).expand(*probs.shape[:2], -1, -1)
    slash.scatter_add_(-1, offsets.reshape(*probs.shape[:2], -1), probs.reshape(*probs.shape[:2], -1))
    return vertical, slash
