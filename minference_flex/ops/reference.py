"""Plain PyTorch references: dense boolean masks built straight from the documented semantics.

These build Sq x Sk masks and are meant for tests, the pattern search on short prompts and
anyone who wants to check a kernel; never for long sequences. Masks are [B, H, Sq, Sk] bool
with mask[b, h, i, j] True iff query i attends key j. The queries are the last Sq of the Sk
positions: query i sits at p = Sk - Sq + i (Sq defaults to Sk, a whole pre-fill).
"""

from __future__ import annotations

import math

import torch


def query_positions(seq_len: int, q_len: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """[Sq] absolute positions of the last Sq (default Sk = seq_len) queries."""
    q_len = seq_len if q_len is None else q_len
    return torch.arange(seq_len - q_len, seq_len, device=device)


def causal_mask(seq_len: int, device: torch.device | str = "cpu", q_len: int | None = None) -> torch.Tensor:
    """[Sq, Sk] bool: j <= p for the query at p = Sk - Sq + i."""
    p = query_positions(seq_len, q_len, device)
    return torch.arange(seq_len, device=device)[None, :] <= p[:, None]


def a_shape_mask(
    seq_len: int, init_num: int, local_window_num: int, device: torch.device | str = "cpu",
    q_len: int | None = None,
) -> torch.Tensor:
    """[Sq, Sk] bool: j <= p and (j < init_num or p - j < local_window_num)."""
    p = query_positions(seq_len, q_len, device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= p) & ((j < init_num) | (p - j < local_window_num))


def vertical_slash_mask(
    v_idx: torch.Tensor, s_idx: torch.Tensor, seq_len: int, block_size: int = 64, q_len: int | None = None
) -> torch.Tensor:
    """[B, H, Sq, Sk] bool mask of `vertical_slash_sparse_attention` (see its docstring).

    Query tile m holds rows [m*bs, (m+1)*bs) of q; with its absolute end e = Sk - Sq + (m+1)*bs
    each slash offset s < e covers keys [max(e - s, bs) - bs, max(e - s, bs)); the query at p
    attends key j iff j <= p and (j is a vertical index or j is in a band of its tile).
    Indices outside [0, Sk) are ignored.
    """
    bsz, heads = v_idx.shape[:2]
    device = v_idx.device
    q_len = seq_len if q_len is None else q_len
    first = seq_len - q_len
    pos = torch.arange(seq_len, device=device)
    mask = torch.zeros(bsz, heads, q_len, seq_len, dtype=torch.bool, device=device)
    for b in range(bsz):
        for h in range(heads):
            cols = v_idx[b, h].long()
            cols = cols[(cols >= 0) & (cols < seq_len)]
            column_keys = torch.zeros(seq_len, dtype=torch.bool, device=device)
            column_keys[cols] = True
            offsets = s_idx[b, h].long()
            offsets = offsets[(offsets >= 0) & (offsets < seq_len)]
            for m in range(math.ceil(q_len / block_size)):
                end = first + (m + 1) * block_size
                live = offsets[offsets < end]
                band_hi = torch.clamp(end - live, min=block_size)
                band_lo = band_hi - block_size
                in_band = ((pos[None, :] >= band_lo[:, None]) & (pos[None, :] < band_hi[:, None])).any(0)
                rows = slice(m * block_size, min((m + 1) * block_size, q_len))
                mask[b, h, rows] = in_band | column_keys
    return mask & causal_mask(seq_len, device, q_len)


def block_sparse_mask(
    q: torch.Tensor, k: torch.Tensor, topk: int, block_size: int = 64
) -> torch.Tensor:
    """[B, H, Sq, Sk] bool mask of `block_sparse_attention` (see its docstring), in float64.

    Query tiles are bs-row tiles of q, key tiles absolute bs-key tiles of k, both mean-pooled
    (a last partial tile is the mean of its tokens). Query tile m scores the key tiles whose
    first key is <= its first absolute position, keeps the `topk` best of them plus every key
    tile holding one of its own positions, and attends causally inside the kept tiles.
    """
    bsz, heads, q_len, _ = q.shape
    seq_len = k.shape[2]
    first = seq_len - q_len
    q_tile_of = torch.arange(q_len, device=q.device) // block_size
    k_tile_of = torch.arange(seq_len, device=q.device) // block_size
    scores = block_sparse_scores(q, k, block_size)
    best = scores.topk(min(topk, scores.shape[-1]), dim=-1)
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=q.device)
    keep.scatter_(-1, best.indices, best.values > float("-inf"))
    own = torch.zeros_like(keep)  # the key tiles of each query tile's own positions
    own[:, :, q_tile_of, k_tile_of[first:]] = True
    mask = (keep | own)[:, :, q_tile_of][:, :, :, k_tile_of]
    return mask & causal_mask(seq_len, q.device, q_len)


def block_sparse_scores(q: torch.Tensor, k: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Float64 pooled tile scores [B, H, Mq, Mk] of `block_sparse_attention`: q's bs-row tiles
    against k's absolute bs-key tiles, mean-pooled (a last partial tile is the mean of its
    tokens); -inf where the key tile's first key is past the query tile's first position."""
    q_len, seq_len = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]

    def pool(x: torch.Tensor) -> torch.Tensor:
        length = x.shape[2]
        tiles = math.ceil(length / block_size)
        tile_of = torch.arange(length, device=x.device) // block_size
        sums = torch.zeros(*x.shape[:2], tiles, x.shape[-1], dtype=torch.float64, device=x.device)
        sums.index_add_(2, tile_of, x.double())
        counts = torch.bincount(tile_of, minlength=tiles).double()
        return sums / counts[:, None]

    scores = pool(q) @ pool(k).repeat_interleave(group, dim=1).transpose(-1, -2)
    q_first = seq_len - q_len + torch.arange(scores.shape[-2], device=q.device) * block_size
    k_first = torch.arange(scores.shape[-1], device=q.device) * block_size
    return scores.masked_fill(k_first[None, :] > q_first[:, None], float("-inf"))


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float64 softmax(q k^T * scale) v over the keys `mask` allows; [B, H, S, D].

    mask broadcasts to [B, H, Sq, Sk]; k and v may have fewer heads (GQA, repeated here). Rows
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
    """Float64 vertical and slash scores of the last `last_q` queries, each [B, H, Sk].

    The queries are the last Sq of the Sk key positions (query i at p = Sk - Sq + i);
    vertical[j] = sum over the last queries p of P(p, j); slash[s] = sum over them of P(p, p - s).
    """
    seq_len = k.shape[2]
    last_q = min(last_q, q.shape[2])
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
