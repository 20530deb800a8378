"""Triton kernel of vertical-slash sparse attention (forward, causal, GQA-native).

One program per (query tile m, batch * query head). It walks three work lists from
`index.build_vertical_slash_index`: the band pieces (contiguous keys, at most one tile each),
the clamped tile [0, bs) where it applies, and the vertical columns in chunks of bs gathered
by index; online softmax in fp32 over all of them. A key that is both a column and in a band
counts once: with DEDUP_ON_BANDS the bands skip column keys (a contiguous bitmap read per
piece, cheap when pieces are few), otherwise the columns skip keys a band covers (a gather
per column chunk, cheap when columns are few). MInference removes covered columns per tile
in its index instead, which costs [B, H, M, NV] memory.
"""

from __future__ import annotations

import contextlib
import os

import torch

if not torch.cuda.is_available():
    # Triton has no CPU backend: without a GPU its interpreter is the only way to run kernels.
    # It must be on before triton.language is first imported (torch._dynamo imports it).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .index import VerticalSlashIndex, dedup_on_bands  # noqa: E402


# The output allocator; tests swap it for a NaN-filled one to catch unwritten rows.
_empty = torch.empty


@triton.jit
def _attend_keys(
    q, k_base, v_base, offs_n, load_ok, key_ok, offs_m, offs_d, d_ok,
    m_i, l_i, acc, stride_ks, stride_vs, qk_scale,
):
    """Online-softmax update of (m_i, l_i, acc) with keys offs_n.

    K/V rows are read where load_ok (which implies in bounds); a key counts where load_ok,
    key_ok and j <= i. key_ok may come from a slower load: it only masks the scores.
    """
    k = tl.load(k_base + offs_n[None, :] * stride_ks + offs_d[:, None],
                mask=load_ok[None, :] & d_ok[:, None], other=0.0)
    qk = tl.dot(q, k) * qk_scale
    keep = (load_ok & key_ok)[None, :] & (offs_n[None, :] <= offs_m[:, None])
    qk = tl.where(keep, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :],
                mask=load_ok[:, None] & d_ok[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc


@triton.jit
def _vertical_slash_fwd(
    Q, K, V, Out,
    Cols, ColCount, PieceLo, PieceHi, PieceCount, Clamped, Dedup,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    seq_len, num_heads, group, nblocks, n_cols_max, n_pieces_max, dedup_len,
    qk_scale,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DEDUP_ON_BANDS: tl.constexpr, COL_BLOCK: tl.constexpr,
):
    m = nblocks - 1 - tl.program_id(0)  # the longest rows first, for load balance
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    hk = h // group
    offs_m = m * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < seq_len
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh

    tile = bh.to(tl.int64) * nblocks + m
    end = (m + 1) * BLOCK
    clamped = tl.load(Clamped + tile)
    lower = clamped * BLOCK
    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    lanes = tl.arange(0, BLOCK)

    pieces = bh.to(tl.int64) * n_pieces_max
    bitmap = bh.to(tl.int64) * dedup_len
    for t in range(0, tl.load(PieceCount + tile)):
        u_lo = tl.load(PieceLo + pieces + t)
        u_hi = tl.load(PieceHi + pieces + t)
        offs_n = end - u_lo - (BLOCK - 1) + lanes
        key_ok = (offs_n >= end - u_hi) & (offs_n >= lower) & (offs_n < seq_len)
        if DEDUP_ON_BANDS:
            is_col = tl.load(Dedup + bitmap + offs_n, mask=key_ok, other=1)
            band_ok = is_col == 0
        else:
            band_ok = key_ok
        m_i, l_i, acc = _attend_keys(q, k_base, v_base, offs_n, key_ok, band_ok, offs_m,
                                     offs_d, d_ok, m_i, l_i, acc, stride_ks, stride_vs, qk_scale)
    if clamped != 0:
        key_ok = lanes < seq_len
        if DEDUP_ON_BANDS:
            is_col = tl.load(Dedup + bitmap + lanes, mask=key_ok, other=1)
            band_ok = is_col == 0
        else:
            band_ok = key_ok
        m_i, l_i, acc = _attend_keys(q, k_base, v_base, lanes, key_ok, band_ok, offs_m,
                                     offs_d, d_ok, m_i, l_i, acc, stride_ks, stride_vs, qk_scale)

    columns = bh.to(tl.int64) * n_cols_max
    n_cols = tl.load(ColCount + tile)
    col_lanes = tl.arange(0, COL_BLOCK)
    for c in range(0, n_cols, COL_BLOCK):
        in_list = c + col_lanes < n_cols
        cols = tl.load(Cols + columns + c + col_lanes, mask=in_list, other=0)
        if DEDUP_ON_BANDS:
            col_ok = in_list
        else:
            # skip columns a band of this tile covers; masking the gathers by it measured
            # faster than loading them (H100, 128K, (3500, 100): 21 ms against 29 ms)
            banded = tl.load(Dedup + bitmap + end - cols, mask=in_list, other=1)
            col_ok = in_list & (banded == 0) & (cols >= lower)
        m_i, l_i, acc = _attend_keys(q, k_base, v_base, cols, col_ok, col_ok, offs_m,
                                     offs_d, d_ok, m_i, l_i, acc, stride_ks, stride_vs, qk_scale)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _check_interpreter() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.standard.zeros, InterpretedFunction):
        raise RuntimeError(
            "vertical-slash attention on CPU runs Triton's interpreter, but triton.language was "
            "imported before TRITON_INTERPRET=1 was set; set it in the environment before "
            "starting Python (or import minference_flex before torch._dynamo / transformers)"
        )


def launch_vertical_slash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: VerticalSlashIndex,
    block_size: int,
    scale: float,
    num_warps: int = 4,
    num_stages: int | None = None,
    col_block: int | None = None,
) -> torch.Tensor:
    """Run the kernel; q [B, H, S, D], k/v [B, Hkv, S, D] with unit stride in D. Returns [B, H, S, D].

    Defaults measured on H100 (perf/tune_kernels.py, 128K and 256K): 4 warps; 2 stages when
    columns dominate (dedup on the bands), else 3; column chunks of bs (128 was slower).
    """
    if not q.is_cuda:
        _check_interpreter()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bsz, heads, seq_len, head_dim = q.shape
    out = _empty(q.shape, dtype=q.dtype, device=q.device)
    nblocks = index.col_count.shape[-1]
    block_d = max(16, triton.next_power_of_2(head_dim))
    grid = (nblocks, bsz * heads)
    on_bands = dedup_on_bands(index)
    if num_stages is None:
        num_stages = 2 if on_bands else 3
    log2e = 1.4426950408889634
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _vertical_slash_fwd[grid](
            q, k, v, out,
            index.cols, index.col_count, index.piece_lo, index.piece_hi, index.piece_count,
            index.clamped, index.dedup,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            seq_len, heads, heads // k.shape[1], nblocks,
            index.cols.shape[-1], index.piece_lo.shape[-1], index.dedup.shape[-1],
            scale * log2e,
            BLOCK=block_size, HEAD_DIM=head_dim, BLOCK_D=block_d,
            DEDUP_ON_BANDS=on_bands, COL_BLOCK=col_block or block_size,
            num_warps=num_warps, num_stages=num_stages,
        )
    return out

