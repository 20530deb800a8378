"""Triton backward of vertical-slash sparse attention (causal, GQA-native).

Gradients from the forward's output O, its log-sum-exp L (log2 units, stored by the forward
kernel with `lse=`) and the output gradient dO, with delta = rowsum(dO * O):
P = exp2(S * log2e * scale - L), dP = dO V^T, dS = P * (dP - delta), dQ = scale * dS K,
dK = scale * dS^T Q, dV = P^T dO, over exactly the (query, key) pairs the forward counted.

Three kernels over the forward's work list (`index.VerticalSlashIndex`), none with atomics:
- `_vertical_slash_bwd_rows`, one program per (query tile m, batch * query head), like the
  forward: it walks the tile's band pieces, packed distances, clamped tile and column chunks
  with the forward's masks (band pieces always masked: the forward's unmasked pieces pass the
  same masks whole), accumulates the tile's dQ in registers and stores it once.
- `_vertical_slash_bwd_cols`, one program per (chunk of bs columns, batch * query head): the
  columns are read by every later query tile, so their dK and dV are accumulated key-major in
  registers over those tiles, into fp32 [B, H, NV, D] in the gathered layout of
  `kernel.gather_columns`.
- `_vertical_slash_bwd_bands`, one program per (key tile n, batch * kv head): query tile m
  reads key tile n through its bands only at the distances u = e - j of one window of bs
  distances, W_k = [first + k*bs + 1, first + (k+1)*bs] with k = m - n (first = Sk - Sq), the
  same for every key tile. So each key tile visits the query tiles n + k for the windows k
  that meet the union of the bands (a per-head list, `band_windows`) and masks keys by that
  union's bitmap; a band that straddles two windows is computed in both. Over the query heads
  of its group it sums the band keys' dK/dV, adds the columns' (looked up through
  `column_slots`) and stores each key's gradients once, in the inputs' dtype: no fp32 copy of
  K or V is allocated.

Loads go through pointers only (no TMA); column keys are computed twice (dQ in the first
kernel, dK/dV in the second).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from .._interpreter import check_interpreter

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .index import VerticalSlashIndex, _compact, _interval_cover, _pad, dedup_on_bands, piece_distances  # noqa: E402
from . import kernel as _kernel  # noqa: E402
from .kernel import LO_BITS, SKIP_SHIFT, gather_columns  # noqa: E402  (constexprs the kernels read)

LOG2E = 1.4426950408889634


@triton.jit
def _query_rows(Q, DO, Lse, Delta, q_base, do_base, stats_base, rows_q, row_ok, stride_qs, stride_dos, offs_d, d_ok):
    """(q, dO) [rows, D] of query rows rows_q of one head (zeros past row_ok) and their lse
    (+inf past row_ok, so their weights are 0) and delta; q_base / do_base / stats_base are the
    head's offsets in Q / DO and in the [B*H, Sq] Lse / Delta."""
    tile_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + q_base + rows_q[:, None] * stride_qs + offs_d[None, :], mask=tile_mask, other=0.0)
    do = tl.load(DO + do_base + rows_q[:, None] * stride_dos + offs_d[None, :], mask=tile_mask, other=0.0)
    lse = tl.load(Lse + stats_base + rows_q, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + stats_base + rows_q, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _grad_keys(
    q, do, lse, delta, k_base, v_base, rows, stride_k, stride_v, load_ok, key_ok, pos, offs_m, offs_d, d_ok,
    dq, qk_scale,
):
    """One key chunk of a query tile: returns dq plus the chunk's dS K (unscaled). A key counts
    where load_ok and key_ok and its position pos <= the query's (rows are read where load_ok)."""
    kt = tl.load(k_base + rows[None, :] * stride_k + offs_d[:, None],
                 mask=load_ok[None, :] & d_ok[:, None], other=0.0)
    vt = tl.load(v_base + rows[None, :] * stride_v + offs_d[:, None],
                 mask=load_ok[None, :] & d_ok[:, None], other=0.0)
    keep = (load_ok & key_ok)[None, :] & (pos[None, :] <= offs_m[:, None])
    p = tl.where(keep, tl.exp2(tl.dot(q, kt) * qk_scale - lse[:, None]), 0.0)
    ds = p * (tl.dot(do, vt) - delta[:, None])
    return tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)


@triton.jit
def _vertical_slash_bwd_rows(
    Q, DO, Lse, Delta, K, V, KCols, VCols, DQ,
    Cols, ColCount, PieceLo, PieceRanges, Dists, DistCount, Clamped, Dedup,
    stride_qb, stride_qh, stride_qs,
    stride_dob, stride_doh, stride_dos,
    stride_dqb, stride_dqh, stride_dqs,
    stride_kb, stride_kh, stride_ks,
    seq_len, num_heads, group, nblocks, n_cols_max, n_pieces_max, n_dists_max, dedup_len,
    qk_scale, sm_scale, q_offset,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DEDUP_ON_BANDS: tl.constexpr,
    COL_BLOCK: tl.constexpr,
):
    """dQ of query tile m over all its keys. K and V are contiguous [B, Hkv, Sk, D]
    (stride_k*). seq_len is Sk; query row r sits at position q_offset + r (q_offset = Sk - Sq),
    and the tile ends at e = q_offset + (m+1)*bs."""
    m = nblocks - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    hk = h // group
    rows_q = m * BLOCK + tl.arange(0, BLOCK)
    offs_m = q_offset + rows_q
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = rows_q < seq_len - q_offset
    tile_mask = row_ok[:, None] & d_ok[None, :]
    q, do, lse, delta = _query_rows(Q, DO, Lse, Delta, b * stride_qb + h * stride_qh, b * stride_dob + h * stride_doh,
                                    bh.to(tl.int64) * (seq_len - q_offset), rows_q, row_ok, stride_qs, stride_dos,
                                    offs_d, d_ok)
    kv = b * stride_kb + hk * stride_kh
    k_base, v_base = K + kv, V + kv

    tile = bh.to(tl.int64) * nblocks + m
    end = q_offset + (m + 1) * BLOCK
    lower = tl.load(Clamped + tile) * BLOCK
    lanes = tl.arange(0, BLOCK)
    bitmap = Dedup + bh.to(tl.int64) * dedup_len
    dq = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)

    # band pieces: keys e - u for u in [u_lo + skip, u_lo + bs - 1], within [lower, S)
    pieces = PieceLo + bh.to(tl.int64) * n_pieces_max
    r1 = tl.load(PieceRanges + tile * 2 + 1)
    for t in range(0, r1):
        piece = tl.load(pieces + t)
        offs_n = end - (piece & LO_BITS) - (BLOCK - 1) + lanes
        ok = (offs_n >= lower) & (offs_n < seq_len)
        key_ok = ok
        if DEDUP_ON_BANDS:
            key_ok = ok & (lanes < BLOCK - (piece >> SKIP_SHIFT))
            key_ok = key_ok & (tl.load(bitmap + offs_n, mask=ok, other=1) == 0)
        dq = _grad_keys(q, do, lse, delta, k_base, v_base, offs_n, stride_ks, stride_ks, ok, key_ok, offs_n,
                        offs_m, offs_d, d_ok, dq, qk_scale)
    # packed band distances
    dists = Dists + bh.to(tl.int64) * n_dists_max
    n_dists = tl.load(DistCount + tile)
    for c in range(0, n_dists, BLOCK):
        in_list = c + lanes < n_dists
        offs_n = end - tl.load(dists + c + lanes, mask=in_list, other=0)
        key_ok = in_list & (offs_n < seq_len)
        band_ok = key_ok
        if DEDUP_ON_BANDS:
            band_ok = key_ok & (tl.load(bitmap + offs_n, mask=key_ok, other=1) == 0)
        dq = _grad_keys(q, do, lse, delta, k_base, v_base, offs_n, stride_ks, stride_ks, key_ok, band_ok, offs_n,
                        offs_m, offs_d, d_ok, dq, qk_scale)
    # the clamped tile: keys [0, bs)
    if lower != 0:
        key_ok = lanes < seq_len
        band_ok = key_ok
        if DEDUP_ON_BANDS:
            band_ok = key_ok & (tl.load(bitmap + lanes, mask=key_ok, other=1) == 0)
        dq = _grad_keys(q, do, lse, delta, k_base, v_base, lanes, stride_ks, stride_ks, key_ok, band_ok, lanes,
                        offs_m, offs_d, d_ok, dq, qk_scale)
    # columns (their dK / dV come from `_vertical_slash_bwd_cols`): gathered rows c + lanes
    columns = bh.to(tl.int64) * n_cols_max
    n_cols = tl.load(ColCount + tile)
    col_lanes = tl.arange(0, COL_BLOCK)
    for c in range(0, n_cols, COL_BLOCK):
        in_list = c + col_lanes < n_cols
        cols = tl.load(Cols + columns + c + col_lanes, mask=in_list, other=0)
        col_ok = in_list
        if not DEDUP_ON_BANDS:  # the columns skip keys a band of this tile covers
            banded = tl.load(bitmap + end - cols, mask=in_list, other=1)
            col_ok = in_list & (banded == 0) & (cols >= lower)
        dq = _grad_keys(q, do, lse, delta, KCols + columns * HEAD_DIM, VCols + columns * HEAD_DIM, c + col_lanes,
                        HEAD_DIM, HEAD_DIM, col_ok, col_ok, cols, offs_m, offs_d, d_ok, dq, qk_scale)

    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows_q[:, None] * stride_dqs + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=tile_mask)


@triton.jit
def _vertical_slash_bwd_cols(
    Q, DO, Lse, Delta, KCols, VCols, DKCols, DVCols, Cols, Clamped, Dedup,
    stride_qb, stride_qh, stride_qs,
    stride_dob, stride_doh, stride_dos,
    seq_len, num_heads, nblocks, n_cols_max, dedup_len, qk_scale, sm_scale, q_offset,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DEDUP_ON_BANDS: tl.constexpr,
    COL_BLOCK: tl.constexpr,
):
    """dK / dV (fp32, scale applied to dK) of one chunk of a query head's columns, rows
    [j * COL_BLOCK, (j + 1) * COL_BLOCK) of its gathered list, summed over the query tiles
    from the one holding its first column on, with the forward's column masks."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    lanes = j * COL_BLOCK + tl.arange(0, COL_BLOCK)
    in_list = lanes < n_cols_max
    columns = bh.to(tl.int64) * n_cols_max
    cols = tl.load(Cols + columns + lanes, mask=in_list, other=seq_len)
    valid = cols < seq_len  # padding entries are >= S
    gathered = (columns + lanes)[None, :] * HEAD_DIM + offs_d[:, None]
    kt = tl.load(KCols + gathered, mask=valid[None, :] & d_ok[:, None], other=0.0)
    vt = tl.load(VCols + gathered, mask=valid[None, :] & d_ok[:, None], other=0.0)
    bitmap = Dedup + bh.to(tl.int64) * dedup_len
    dk = tl.zeros([COL_BLOCK, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([COL_BLOCK, BLOCK_D], dtype=tl.float32)
    q_len = seq_len - q_offset
    # the first query tile whose last position reaches the chunk's first (smallest) column
    first = tl.maximum(tl.min(tl.where(valid, cols, seq_len)) - q_offset, 0) // BLOCK
    for m in range(first, nblocks):
        rows_q = m * BLOCK + tl.arange(0, BLOCK)
        offs_m = q_offset + rows_q
        row_ok = rows_q < q_len
        q, do, lse, delta = _query_rows(Q, DO, Lse, Delta, b * stride_qb + h * stride_qh,
                                        b * stride_dob + h * stride_doh, bh.to(tl.int64) * q_len, rows_q, row_ok,
                                        stride_qs, stride_dos, offs_d, d_ok)
        col_ok = valid
        if not DEDUP_ON_BANDS:  # as the forward: skip columns a band of this tile covers
            end = q_offset + (m + 1) * BLOCK
            lower = tl.load(Clamped + bh.to(tl.int64) * nblocks + m) * BLOCK
            before = valid & (cols < end)
            banded = tl.load(bitmap + end - cols, mask=before, other=1)
            col_ok = before & (banded == 0) & (cols >= lower)
        keep = col_ok[None, :] & (cols[None, :] <= offs_m[:, None])
        p = tl.where(keep, tl.exp2(tl.dot(q, kt) * qk_scale - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, vt) - delta[:, None])
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk)
    out = (columns + lanes)[:, None] * HEAD_DIM + offs_d[None, :]
    store_ok = in_list[:, None] & d_ok[None, :]
    tl.store(DKCols + out, dk * sm_scale, mask=store_ok)
    tl.store(DVCols + out, dv, mask=store_ok)


@triton.jit
def _vertical_slash_bwd_bands(
    Q, DO, Lse, Delta, K, V, DK, DV, Bands, Windows, WindowCount, Clamped, Dedup, Slots, DKCols, DVCols,
    stride_qb, stride_qh, stride_qs,
    stride_dob, stride_doh, stride_dos,
    stride_kb, stride_kh, stride_ks,
    seq_len, num_heads, group, nblocks, bands_len, n_windows_max, dedup_len, slots_len, n_cols,
    qk_scale, sm_scale, q_offset,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DEDUP_ON_BANDS: tl.constexpr,
    HAS_COLS: tl.constexpr,
):
    """dK / dV of key tile n of one kv head, stored once in DK / DV's dtype: its band keys'
    gradients over the query heads of its group and, per head, the query tiles n + k of its
    windows k (see the module), plus the columns' (DKCols / DVCols: fp32 [B, H, NV, D] by
    `_vertical_slash_bwd_cols`, row Slots[b, h, j] for key j, -1 where j is no column). A key
    j counts for query tile m where j >= lower(m) and e - j is in the bands' union (Bands:
    [B, H, E + 1] int8), or j < bs where tile m is clamped; with DEDUP_ON_BANDS only if it is
    not a column (Dedup); and only for queries at positions >= j."""
    n = tl.program_id(0)
    bhk = tl.program_id(1)
    kv_heads = num_heads // group
    b = (bhk // kv_heads).to(tl.int64)
    hk = (bhk % kv_heads).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    keys = n * BLOCK + tl.arange(0, BLOCK)
    key_in = keys < seq_len
    kv = b * stride_kb + hk * stride_kh + keys[None, :] * stride_ks + offs_d[:, None]
    kt = tl.load(K + kv, mask=key_in[None, :] & d_ok[:, None], other=0.0)
    vt = tl.load(V + kv, mask=key_in[None, :] & d_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dk_cols = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dv_cols = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    q_len = seq_len - q_offset
    for g in range(0, group):
        h = hk * group + g
        bh = b * num_heads + h
        if HAS_COLS:
            slot = tl.load(Slots + bh * slots_len + keys, mask=key_in, other=-1)
            col_rows = (bh * n_cols + slot)[:, None] * HEAD_DIM + offs_d[None, :]
            col_ok = (slot >= 0)[:, None] & d_ok[None, :]
            dk_cols += tl.load(DKCols + col_rows, mask=col_ok, other=0.0)
            dv_cols += tl.load(DVCols + col_rows, mask=col_ok, other=0.0)
        bands = Bands + bh * bands_len
        key_ok = key_in
        if DEDUP_ON_BANDS:  # the bands skip column keys
            key_ok = key_in & (tl.load(Dedup + bh * dedup_len + keys, mask=key_in, other=1) == 0)
        windows = Windows + bh * n_windows_max
        for i in range(0, tl.load(WindowCount + bh)):
            m = n + tl.load(windows + i)
            if (m >= 0) & (m < nblocks):
                rows_q = m * BLOCK + tl.arange(0, BLOCK)
                offs_m = q_offset + rows_q
                row_ok = rows_q < q_len
                q, do, lse, delta = _query_rows(Q, DO, Lse, Delta, b * stride_qb + h * stride_qh,
                                                b * stride_dob + h * stride_doh, bh * q_len, rows_q, row_ok,
                                                stride_qs, stride_dos, offs_d, d_ok)
                end = q_offset + (m + 1) * BLOCK
                clamped = tl.load(Clamped + bh * nblocks + m)
                lower = clamped * BLOCK
                dist = end - keys
                in_union = key_ok & (dist >= 1)
                in_union = in_union & (tl.load(bands + dist, mask=in_union, other=0) != 0)
                # keys below `lower` come whole from the clamped tile
                band = in_union | (key_ok & (keys < lower))
                keep = band[None, :] & (keys[None, :] <= offs_m[:, None])
                p = tl.where(keep, tl.exp2(tl.dot(q, kt) * qk_scale - lse[:, None]), 0.0)
                ds = p * (tl.dot(do, vt) - delta[:, None])
                dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
                dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk)
    out = b * stride_kb + hk * stride_kh + keys[:, None] * stride_ks + offs_d[None, :]
    store_ok = key_in[:, None] & d_ok[None, :]
    tl.store(DK + out, (dk * sm_scale + dk_cols).to(DK.dtype.element_ty), mask=store_ok)
    tl.store(DV + out, (dv + dv_cols).to(DV.dtype.element_ty), mask=store_ok)


class BandWindows(NamedTuple):
    """What `_vertical_slash_bwd_bands` walks (B, H as q; E the last query tile's end).

    bands: [B, H, E + 1] int8, 1 at the distances u that some query tile reads through its
        bands (`band_union`).
    windows: [B, H, W] int32, ascending, the k whose window [first + k*bs + 1,
        first + (k+1)*bs] meets `bands` (k from -ceil(first / bs) to M - 1), padded.
    count: [B, H] int32, how many of `windows` are valid.
    """

    bands: torch.Tensor
    windows: torch.Tensor
    count: torch.Tensor


def band_union(index: VerticalSlashIndex, first: int, block_size: int) -> torch.Tensor:
    """[B, H, E + 1] bool (E = first + M*bs, first = Sk - Sq): the distances u = e - j that the
    query tiles read through their band pieces and packed distances, and the end e of each
    clamped tile. All lie in the union of the bands [s+1, s+bs] (a clamped tile has an offset
    in (e - bs, e)), so a key j >= lower(m) of tile m is a band key iff e - j is marked; the
    clamped tiles' ends make `band_windows` list the window k = m that reaches their keys
    [0, bs). The last tile reads the most of both lists (each tile reads a prefix of them,
    and reach grows with the tile), so its counts bound them."""
    nblocks = index.col_count.shape[-1]
    span = first + nblocks * block_size + 1
    device = index.piece_lo.device
    live = torch.arange(index.piece_lo.shape[-1], device=device) < index.piece_ranges[..., -1, 1:].long()
    first_u, last_u = piece_distances(index.piece_lo, block_size)
    union = _interval_cover(torch.where(live, first_u, span), torch.where(live, last_u, span), span + 1, span)
    dists = index.dists.long()
    listed = torch.arange(dists.shape[-1], device=dists.device) < index.dist_count[..., -1:].long()
    union.scatter_(-1, torch.where(listed, dists.clamp(max=span), span), True)
    ends = first + (torch.arange(nblocks, device=device) + 1) * block_size
    union.scatter_(-1, torch.where(index.clamped != 0, ends, span), True)
    return union[..., :span]


def band_windows(index: VerticalSlashIndex, first: int, block_size: int) -> BandWindows:
    """The key-major band pass's lists from the forward's index (first = Sk - Sq)."""
    nblocks = index.col_count.shape[-1]
    last_end = first + nblocks * block_size
    bands = band_union(index, first, block_size)
    covered = torch.nn.functional.pad(torch.cumsum(bands.int(), dim=-1), (1, 0))  # covered[u] = #bands < u
    k = torch.arange(-((first + block_size - 1) // block_size), nblocks, device=bands.device)
    lo = (first + k * block_size + 1).clamp(min=1, max=last_end + 1)
    hi = (first + (k + 1) * block_size).clamp(min=0, max=last_end)
    lead = covered.shape[:-1]
    hits = covered.gather(-1, (hi + 1).expand(*lead, -1)) - covered.gather(-1, lo.expand(*lead, -1))
    meets = (hits > 0) & (hi >= lo)
    windows = _compact(k.expand(*meets.shape), meets, k.shape[0], _pad(last_end, block_size))
    return BandWindows(
        bands=bands.to(torch.int8).contiguous(),
        windows=windows.clamp(max=2**30).to(torch.int32).contiguous(),
        count=meets.sum(-1, dtype=torch.int32).contiguous(),
    )


def column_slots(cols: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[B, H, Sk + 1] int32: the slot of key j in cols [B, H, NV] (distinct, padded with values
    >= Sk), -1 where j is no column; the last entry takes the padding."""
    slots = torch.full((*cols.shape[:-1], seq_len + 1), -1, dtype=torch.int32, device=cols.device)
    slot = torch.arange(cols.shape[-1], dtype=torch.int32, device=cols.device).expand(cols.shape)
    return slots.scatter_(-1, cols.long().clamp(max=seq_len), slot)


def launch_vertical_slash_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    index: VerticalSlashIndex,
    block_size: int,
    scale: float,
    num_warps: int = 4,
    num_stages: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `kernel.launch_vertical_slash` over `index`.

    Args:
        grad, q, out: [B, H, Sq, D] (output gradient, queries, the forward's output; the
            queries are the last Sq of the Sk positions); k, v: [B, Hkv, Sk, D]; lse:
            [B, H, Sq] fp32, the forward's log-sum-exp in log2 units
            (`launch_vertical_slash(..., lse=)`); index, block_size, scale: as the forward;
            num_warps, num_stages: the launches of the three kernels.
    Returns:
        (dq [B, H, Sq, D], dk, dv [B, Hkv, Sk, D]) in the inputs' dtype; dk and dv summed over
        the query heads of each group.
    """
    if not q.is_cuda:
        check_interpreter()
    q, grad = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, grad))
    k, v, lse = k.contiguous(), v.contiguous(), lse.contiguous()
    bsz, heads, q_len, head_dim = q.shape
    kv_heads, seq_len = k.shape[1], k.shape[2]
    q_offset = seq_len - q_len
    delta = (grad.float() * out.float()).sum(-1).contiguous()
    # every row of each is written
    dq = _kernel._empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _kernel._empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _kernel._empty(v.shape, dtype=v.dtype, device=v.device)
    nblocks = index.col_count.shape[-1]
    block_d = max(16, triton.next_power_of_2(head_dim))
    on_bands = dedup_on_bands(index, seq_len)
    k_cols, v_cols = gather_columns(k, v, index.cols)
    n_cols = index.cols.shape[-1]
    windows = band_windows(index, q_offset, block_size)
    log2e_scale = scale * LOG2E
    common = dict(BLOCK=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d, DEDUP_ON_BANDS=on_bands,
                  num_warps=num_warps, num_stages=num_stages)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _vertical_slash_bwd_rows[(nblocks, bsz * heads)](
            q, grad, lse, delta, k, v, k_cols, v_cols, dq,
            index.cols, index.col_count, index.piece_lo, index.piece_ranges, index.dists,
            index.dist_count, index.clamped, index.dedup,
            q.stride(0), q.stride(1), q.stride(2),
            grad.stride(0), grad.stride(1), grad.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            seq_len, heads, heads // kv_heads, nblocks,
            n_cols, index.piece_lo.shape[-1], index.dists.shape[-1], index.dedup.shape[-1],
            log2e_scale, scale, q_offset,
            COL_BLOCK=block_size, **common,
        )
        dk_cols = dv_cols = slots = dq  # not read without columns
        if n_cols > 0:
            dk_cols = _kernel._empty((bsz, heads, n_cols, head_dim), dtype=torch.float32, device=q.device)
            dv_cols = _kernel._empty((bsz, heads, n_cols, head_dim), dtype=torch.float32, device=q.device)
            _vertical_slash_bwd_cols[(triton.cdiv(n_cols, block_size), bsz * heads)](
                q, grad, lse, delta, k_cols, v_cols, dk_cols, dv_cols, index.cols, index.clamped, index.dedup,
                q.stride(0), q.stride(1), q.stride(2),
                grad.stride(0), grad.stride(1), grad.stride(2),
                seq_len, heads, nblocks, n_cols, index.dedup.shape[-1], log2e_scale, scale, q_offset,
                COL_BLOCK=block_size, **common,
            )
            slots = column_slots(index.cols, seq_len)
        _vertical_slash_bwd_bands[(triton.cdiv(seq_len, block_size), bsz * kv_heads)](
            q, grad, lse, delta, k, v, dk, dv, windows.bands, windows.windows, windows.count,
            index.clamped, index.dedup, slots, dk_cols, dv_cols,
            q.stride(0), q.stride(1), q.stride(2),
            grad.stride(0), grad.stride(1), grad.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            seq_len, heads, heads // kv_heads, nblocks, windows.bands.shape[-1], windows.windows.shape[-1],
            index.dedup.shape[-1], seq_len + 1, n_cols, log2e_scale, scale, q_offset,
            HAS_COLS=n_cols > 0, **common,
        )
    return dq, dk, dv
