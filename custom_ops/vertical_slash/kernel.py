"""Triton kernel of vertical-slash sparse attention (forward, causal, GQA-native).

One program per (query tile m, batch * query head). The queries are the last Sq of the Sk
key positions: tile m holds q rows [m*bs, (m+1)*bs) at positions from q_offset + m*bs
(q_offset = Sk - Sq), and ends at e = q_offset + (m+1)*bs. It walks four work lists from
`index.build_vertical_slash_index`: the tile's band pieces (contiguous keys), its other
band distances packed 64 per chunk (keys e - u), the clamped tile [0, bs) where it applies,
and the vertical columns in chunks of bs; online softmax in fp32 over all of them. The
columns' K/V rows are gathered once per head into contiguous buffers before the launch
(`gather_columns`), so every chunk is a plain contiguous load that the pipeliner can
prefetch. A key that is both a column and in a band counts once: with DEDUP_ON_BANDS the
bands skip column keys (a bitmap read per band tile, cheap when band tiles are few),
otherwise the columns skip keys a band covers (a gather per column chunk, cheap when
columns are few). MInference removes covered columns per tile in its index instead, which
costs [B, H, M, NV] memory.

The whole band pieces (wholly before the tile and above its lowest key) and the column
chunks wholly before the tile (when the bands de-duplicate) load K/V by TMA on CUDA
(`_attend_rows_tma`), masked only by the column bitmap (and a piece's skip) when the bands
de-duplicate. Pieces address their keys from one scalar; the packed distances need a vector
load of indices first. Each loop a tile enters costs a latency that a few iterations do not
amortize (H100: widening the local band from offset 0 to 0..99 cost 1.5 ms at 128K, from
0..99 to 0..299 0.4-0.6 ms for more tiles; perf/tune_kernels.py --only marginal), so only
what does not fill a whole piece is packed, and with dedup on the bands the one short piece
of the estimator's local band is read as a window, leaving the packed loop empty. The piece
that reaches into the tile (causal) and the one that reaches below its lowest key take
masked pointer loads.
"""

from __future__ import annotations

import contextlib

import torch

from .._interpreter import check_interpreter

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .index import SKIP_SHIFT as _SKIP_SHIFT  # noqa: E402
from .index import VerticalSlashIndex, dedup_on_bands  # noqa: E402

SKIP_SHIFT = tl.constexpr(_SKIP_SHIFT)
LO_BITS = tl.constexpr((1 << _SKIP_SHIFT) - 1)


# The output allocator; tests swap it for a NaN-filled one to catch unwritten rows.
_empty = torch.empty


@triton.jit
def _softmax_weights(qk, keep, m_i, qk_scale, MASKED: tl.constexpr):
    """The online-softmax step for raw scores qk [BLOCK_M, N] against the running row maxima
    m_i (log2 units): (p, alpha, m_new), p = the tile's unnormalised weights, alpha = the
    rescale of the previous sums. With MASKED only the keys where keep [BLOCK_M, N] count
    (a row with none so far keeps m = -inf and gets p = 0); without, keep is unused."""
    if MASKED:
        qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_safe = m_new
    p = tl.exp2(qk * qk_scale - m_safe[:, None])  # scale and shift in one FMA
    alpha = tl.exp2(m_i - m_safe)
    return p, alpha, m_new


@triton.jit
def _accumulate(p, alpha, v, l_i, acc):
    """(l_i, acc) rescaled by alpha plus the weights p [BLOCK_M, N] applied to v [N, D]."""
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    return l_i, acc


@triton.jit
def _attend_keys(
    q, k_base, v_base, rows, stride_k, stride_v, load_ok, key_ok, pos, offs_m, offs_d, d_ok,
    m_i, l_i, acc, qk_scale, MASKED: tl.constexpr,
):
    """Online-softmax update of (m_i, l_i, acc) with the keys at K/V rows `rows`.

    Rows are read where load_ok (which implies in bounds). With MASKED, a key counts where
    load_ok, key_ok and its position pos <= the query's; without, every key counts (the
    caller guarantees it). key_ok may come from a slower load: it only masks the scores.
    """
    k = tl.load(k_base + rows[None, :] * stride_k + offs_d[:, None],
                mask=load_ok[None, :] & d_ok[:, None], other=0.0)
    qk = tl.dot(q, k)
    keep = (load_ok & key_ok)[None, :] & (pos[None, :] <= offs_m[:, None])
    p, alpha, m_i = _softmax_weights(qk, keep, m_i, qk_scale, MASKED)
    v = tl.load(v_base + rows[:, None] * stride_v + offs_d[None, :],
                mask=load_ok[:, None] & d_ok[None, :], other=0.0)
    l_i, acc = _accumulate(p, alpha, v, l_i, acc)
    return m_i, l_i, acc


@triton.jit
def _attend_rows_tma(q, k_desc, v_desc, row, keep, m_i, l_i, acc, qk_scale, KEY_MASK: tl.constexpr):
    """`_attend_keys` for the K/V rows [row, row + block) of two TMA descriptors over 2-D
    [rows, D] views; with KEY_MASK only the keys where keep [block] counts, else all."""
    k = k_desc.load([row, 0])
    p, alpha, m_i = _softmax_weights(tl.dot(q, tl.trans(k)), keep[None, :], m_i, qk_scale, KEY_MASK)
    v = v_desc.load([row, 0])
    l_i, acc = _accumulate(p, alpha, v, l_i, acc)
    return m_i, l_i, acc


@triton.jit
def _attend_piece(
    q, k_base, v_base, lo_ptr, end, lower, seq_len, col_bitmap, lanes, stride_k, stride_v, offs_m,
    offs_d, d_ok, m_i, l_i, acc, qk_scale, MASKED: tl.constexpr, DEDUP_ON_BANDS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Update with the band piece at lo_ptr (u_lo and skip, see `index.SKIP_SHIFT`): the keys
    e - u for u in [u_lo + skip, u_lo + bs - 1]. With MASKED only those in [lower, seq_len)
    and causal count (a piece near the diagonal or reaching below the tile's lowest key); with
    DEDUP_ON_BANDS keys that are columns don't."""
    piece = tl.load(lo_ptr)
    offs_n = end - (piece & LO_BITS) - (BLOCK - 1) + lanes
    if MASKED:
        ok = (offs_n >= lower) & (offs_n < seq_len)
    else:
        ok = lanes >= 0
    key_ok = ok
    if DEDUP_ON_BANDS:  # (only then may a piece skip distances)
        key_ok = ok & (lanes < BLOCK - (piece >> SKIP_SHIFT))
        key_ok = key_ok & (tl.load(col_bitmap + offs_n, mask=ok, other=1) == 0)
    return _attend_keys(q, k_base, v_base, offs_n, stride_k, stride_v, ok, key_ok, offs_n, offs_m,
                        offs_d, d_ok, m_i, l_i, acc, qk_scale, MASKED or DEDUP_ON_BANDS)


@triton.jit
def _attend_distances(
    q, k_base, v_base, dist_ptr, c, n, col_bitmap, end, seq_len, lanes, stride_k, stride_v,
    offs_m, offs_d, d_ok, m_i, l_i, acc, qk_scale, DEDUP_ON_BANDS: tl.constexpr,
):
    """Masked update with band distances [c, min(c + bs, n)) of the tile's list: keys e - u
    that are < seq_len and causal count (with DEDUP_ON_BANDS, keys that are columns don't)."""
    in_list = c + lanes < n
    offs_n = end - tl.load(dist_ptr + c + lanes, mask=in_list, other=0)
    key_ok = in_list & (offs_n < seq_len)
    if DEDUP_ON_BANDS:
        is_col = tl.load(col_bitmap + offs_n, mask=key_ok, other=1)
        band_ok = is_col == 0
    else:
        band_ok = key_ok
    return _attend_keys(q, k_base, v_base, offs_n, stride_k, stride_v, key_ok, band_ok, offs_n,
                        offs_m, offs_d, d_ok, m_i, l_i, acc, qk_scale, True)


@triton.jit
def _vertical_slash_fwd(
    Q, K, V, KDesc, VDesc, KCols, VCols, KColsDesc, VColsDesc, Out, Lse,
    Cols, ColCount, PieceLo, PieceRanges, Dists, DistCount, Clamped, Dedup,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    seq_len, q_len, q_offset, num_heads, group, nblocks, n_cols_max, n_pieces_max, n_dists_max, dedup_len,
    qk_scale,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DEDUP_ON_BANDS: tl.constexpr, COL_BLOCK: tl.constexpr,
    COL_STAGES: tl.constexpr = None, COL_TMA: tl.constexpr = False, PIECE_TMA: tl.constexpr = False,
    STORE_LSE: tl.constexpr = False,
):
    m = nblocks - 1 - tl.program_id(0)  # the longest rows first, for load balance
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    hk = h // group
    q_rows = m * BLOCK + tl.arange(0, BLOCK)
    offs_m = q_offset + q_rows  # absolute positions: every causal test compares these
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = q_rows < q_len
    q = tl.load(Q + b * stride_qb + h * stride_qh + q_rows[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh

    tile = bh.to(tl.int64) * nblocks + m
    end = q_offset + (m + 1) * BLOCK
    clamped = tl.load(Clamped + tile)
    lower = clamped * BLOCK
    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    lanes = tl.arange(0, BLOCK)

    # band keys: whole pieces (the first masked causally where it nears the diagonal, the
    # middle ones read whole, the last masked where it reaches below `lower`), then the packed
    # remaining distances
    pieces = PieceLo + bh.to(tl.int64) * n_pieces_max
    bitmap = bh.to(tl.int64) * dedup_len
    r0 = tl.load(PieceRanges + tile * 2)
    r1 = tl.load(PieceRanges + tile * 2 + 1)
    d0 = ((tl.load(pieces, mask=r1 > 0, other=BLOCK) & LO_BITS) < BLOCK).to(tl.int32)
    for t in range(0, d0):
        m_i, l_i, acc = _attend_piece(q, k_base, v_base, pieces + t, end, lower, seq_len, Dedup + bitmap,
                                      lanes, stride_ks, stride_vs, offs_m, offs_d, d_ok, m_i, l_i, acc,
                                      qk_scale, True, DEDUP_ON_BANDS, BLOCK)
    if PIECE_TMA:
        kv_row = (b * (num_heads // group) + hk) * seq_len + end - (BLOCK - 1)
        for t in range(d0, r0):
            piece = tl.load(pieces + t)
            lo = piece & LO_BITS
            if DEDUP_ON_BANDS:
                keep = lanes < BLOCK - (piece >> SKIP_SHIFT)
                keep = keep & (tl.load(Dedup + bitmap + end - (BLOCK - 1) - lo + lanes) == 0)
            else:
                keep = lanes >= 0
            m_i, l_i, acc = _attend_rows_tma(q, KDesc, VDesc, (kv_row - lo).to(tl.int32), keep,
                                             m_i, l_i, acc, qk_scale, DEDUP_ON_BANDS)
    else:
        for t in range(d0, r0):
            m_i, l_i, acc = _attend_piece(q, k_base, v_base, pieces + t, end, lower, seq_len, Dedup + bitmap,
                                          lanes, stride_ks, stride_vs, offs_m, offs_d, d_ok, m_i, l_i, acc,
                                          qk_scale, False, DEDUP_ON_BANDS, BLOCK)
    for t in range(tl.maximum(r0, d0), r1):
        m_i, l_i, acc = _attend_piece(q, k_base, v_base, pieces + t, end, lower, seq_len, Dedup + bitmap,
                                      lanes, stride_ks, stride_vs, offs_m, offs_d, d_ok, m_i, l_i, acc,
                                      qk_scale, True, DEDUP_ON_BANDS, BLOCK)
    dists = Dists + bh.to(tl.int64) * n_dists_max
    n_dists = tl.load(DistCount + tile)
    for c in range(0, n_dists, BLOCK):
        m_i, l_i, acc = _attend_distances(q, k_base, v_base, dists, c, n_dists, Dedup + bitmap, end,
                                          seq_len, lanes, stride_ks, stride_vs, offs_m, offs_d,
                                          d_ok, m_i, l_i, acc, qk_scale, DEDUP_ON_BANDS)
    if clamped != 0:
        key_ok = lanes < seq_len
        if DEDUP_ON_BANDS:
            is_col = tl.load(Dedup + bitmap + lanes, mask=key_ok, other=1)
            band_ok = is_col == 0
        else:
            band_ok = key_ok
        m_i, l_i, acc = _attend_keys(q, k_base, v_base, lanes, stride_ks, stride_vs,
                                     key_ok, band_ok, lanes, offs_m, offs_d, d_ok,
                                     m_i, l_i, acc, qk_scale, True)

    # columns: K/V rows gathered per head (`gather_columns`), chunk c is rows [c, c + COL_BLOCK)
    columns = bh.to(tl.int64) * n_cols_max
    kc_base = KCols + columns * HEAD_DIM
    vc_base = VCols + columns * HEAD_DIM
    n_cols = tl.load(ColCount + tile)
    col_lanes = tl.arange(0, COL_BLOCK)
    c0 = 0
    if DEDUP_ON_BANDS:
        # whole chunks of columns before this tile (< e - bs) count as they are: no mask
        n_before = tl.load(ColCount + tile - 1, mask=m > 0, other=0)
        c0 = (n_before // COL_BLOCK) * COL_BLOCK
        if COL_TMA:
            for c in tl.range(0, c0, COL_BLOCK, num_stages=COL_STAGES):
                m_i, l_i, acc = _attend_rows_tma(q, KColsDesc, VColsDesc, (columns + c).to(tl.int32),
                                                 col_lanes >= 0, m_i, l_i, acc, qk_scale, False)
        else:
            for c in tl.range(0, c0, COL_BLOCK, num_stages=COL_STAGES):
                rows = c + col_lanes
                m_i, l_i, acc = _attend_keys(q, kc_base, vc_base, rows, HEAD_DIM, HEAD_DIM,
                                             col_lanes >= 0, col_lanes >= 0, rows, offs_m, offs_d,
                                             d_ok, m_i, l_i, acc, qk_scale, False)
    for c in range(c0, n_cols, COL_BLOCK):
        in_list = c + col_lanes < n_cols
        cols = tl.load(Cols + columns + c + col_lanes, mask=in_list, other=0)
        if DEDUP_ON_BANDS:
            col_ok = in_list
        else:
            # skip columns a band of this tile covers; masking the gathers by it measured
            # faster than loading them (H100, 128K, (3500, 100): 21 ms against 29 ms)
            banded = tl.load(Dedup + bitmap + end - cols, mask=in_list, other=1)
            col_ok = in_list & (banded == 0) & (cols >= lower)
        m_i, l_i, acc = _attend_keys(q, kc_base, vc_base, c + col_lanes, HEAD_DIM, HEAD_DIM,
                                     col_ok, col_ok, cols, offs_m, offs_d, d_ok,
                                     m_i, l_i, acc, qk_scale, True)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + q_rows[:, None] * stride_os + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if STORE_LSE:
        # log2 units; +inf for a row without keys, so that the backward's weights there are 0
        lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        tl.store(Lse + bh.to(tl.int64) * q_len + q_rows, lse, mask=row_ok)


def gather_columns(
    k: torch.Tensor, v: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V rows of each query head's columns, contiguous: k, v [B, Hkv, S, D], cols [B, H, NV]
    (padding >= S allowed) -> two [B, H, max(NV, 1), D] tensors (padding rows hold key S - 1;
    with no columns, one unused row, so that the buffers are never empty). Extra memory:
    2 * B * H * NV * D elements, small for sparse budgets (3500 columns at 32 heads: 57 MB)."""
    if cols.shape[-1] == 0:
        cols = cols.new_zeros(*cols.shape[:-1], 1)
    bsz, heads = cols.shape[:2]
    kv_heads, seq_len = k.shape[1], k.shape[2]
    batch = torch.arange(bsz, device=k.device)[:, None, None]
    head = (torch.arange(heads, device=k.device) // (heads // kv_heads))[None, :, None]
    rows = cols.clamp(max=seq_len - 1).long()
    return k[batch, head, rows].contiguous(), v[batch, head, rows].contiguous()


def _tma_ready(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.data_ptr() % 16 == 0


def _row_descriptor(t: torch.Tensor, rows: int):
    """TMA descriptor over contiguous t [..., D] seen as [numel / D, D], loading [rows, D]."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(t.view(-1, t.shape[-1]), [rows, t.shape[-1]])


def launch_vertical_slash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: VerticalSlashIndex,
    block_size: int,
    scale: float,
    num_warps: int = 4,
    num_stages: int = 2,
    col_block: int | None = None,
    col_stages: int | None = 3,
    col_tma: bool = True,
    piece_tma: bool = True,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the kernel; q [B, H, Sq, D] (the last Sq of Sk positions), k/v [B, Hkv, Sk, D] with
    unit stride in D, `index` built for these Sq and Sk. Returns [B, H, Sq, D].
    With `lse` (a contiguous [B, H, Sq] fp32 buffer) the kernel also stores each row's
    log-sum-exp of the scaled scores in log2 units (+inf for a row without keys), which the
    backward (`backward.launch_vertical_slash_backward`) reads; without it nothing more is stored.

    Defaults measured on H100 (perf/tune_kernels.py, perf/ab_vertical_slash.py; 128K and
    256K): 4 warps; 2 pipeline stages (105.7 against 109.0 ms for 3 at (30, 800), 128K), but
    3 for the unmasked column loop (`col_stages`; 11.6 against 12.5 ms at (3500, 100), 128K,
    23.4 against 25.0 ms at 256K; 3 stages for every loop: 12.6 / 25.0 ms; 4: 16.5 ms);
    column chunks of bs (128 was slower). Warp specialization of any loop (Triton 3.6): no
    change. The whole column chunks and the band pieces wholly before the tile load by TMA
    on CUDA where D is a power of two (`col_tma`: gathered columns, 11.3 against 11.9-12.1
    ms at (3500, 100), 128K, 22.5 against 23.7-25.0 at 256K; `piece_tma`: band pieces, 100.3
    against 105.1 ms at (30, 800), 128K, 218.6-221.9 against 226.3-228.6 at 256K). The
    other loops mask by position or gather rows through index vectors.
    """
    if not q.is_cuda:
        check_interpreter()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bsz, heads, q_len, head_dim = q.shape
    seq_len = k.shape[2]
    out = _empty(q.shape, dtype=q.dtype, device=q.device)
    nblocks = index.col_count.shape[-1]
    block_d = max(16, triton.next_power_of_2(head_dim))
    grid = (nblocks, bsz * heads)
    on_bands = dedup_on_bands(index, seq_len)
    k_cols, v_cols = gather_columns(k, v, index.cols)
    tma = q.is_cuda and block_d == head_dim  # whole rows, 16-byte aligned (D >= 16)
    col_tma = col_tma and tma and on_bands
    piece_tma = piece_tma and tma and all(_tma_ready(t) for t in (k, v))
    k_desc, v_desc, kc_desc, vc_desc = k, v, k_cols, v_cols
    if col_tma:
        kc_desc, vc_desc = (_row_descriptor(t, col_block or block_size) for t in (k_cols, v_cols))
    if piece_tma:
        k_desc, v_desc = (_row_descriptor(t, block_size) for t in (k, v))
    log2e = 1.4426950408889634
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _vertical_slash_fwd[grid](
            q, k, v, k_desc, v_desc, k_cols, v_cols, kc_desc, vc_desc, out, out if lse is None else lse,
            index.cols, index.col_count, index.piece_lo, index.piece_ranges, index.dists,
            index.dist_count, index.clamped, index.dedup,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            seq_len, q_len, seq_len - q_len, heads, heads // k.shape[1], nblocks,
            index.cols.shape[-1], index.piece_lo.shape[-1], index.dists.shape[-1], index.dedup.shape[-1],
            scale * log2e,
            BLOCK=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d,
            DEDUP_ON_BANDS=on_bands, COL_BLOCK=col_block or block_size,
            COL_STAGES=col_stages, COL_TMA=col_tma, PIECE_TMA=piece_tma, STORE_LSE=lse is not None,
            num_warps=num_warps, num_stages=num_stages,
        )
    return out
