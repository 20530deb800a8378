"""Triton kernels of block-sparse attention for training: forward with log-sum-exp, backward.

They walk the tiles of `minference_flex.ops.estimate.select_block_sparse_tiles`. The queries are
the last Sq of the Sk key positions (q_offset = Sk - Sq); query tile m holds q rows
[m*bs, (m+1)*bs) and attends
- its `count` chosen key tiles, every one wholly before its first position (no mask);
- the key tiles holding its own positions, n0 = m + q_offset // bs and, when q_offset is not
  a multiple of bs, n0 + 1 (causal mask).
These are the tiles FlexAttention computes from `flex.block_sparse_block_mask`, at the
estimator's 64-key tiles: Inductor's FlexAttention backward on H100 takes only 128 x 128
mask blocks at head_dim 128 (`minference_flex.ops.flex`), which would compute up to 4x the area.

- `_block_sparse_fwd`: one program per (query tile, batch * query head), online softmax in
  fp32; stores the output and each row's log-sum-exp (log2 units).
- `_block_sparse_bwd_rows`: dQ, one program per (query tile, batch * query head), the same walk.
- `_block_sparse_bwd_keys`: dK and dV, one program per (key tile, batch * kv head), summed in
  registers over the query heads of its group and, per head, the query tiles that chose the
  key tile (`invert_tiles`) and those it is an own tile of; plain stores, no atomics.
Heads whose `active` flag is 0 attend nothing: zero output rows, +inf log-sum-exp, zero
gradients (they belong to another pattern of the layer).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from .._interpreter import check_interpreter

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from ..vertical_slash.backward import _grad_keys, _query_rows  # noqa: E402
from ..vertical_slash.kernel import _attend_keys  # noqa: E402

LOG2E = 1.4426950408889634


class TileChoosers(NamedTuple):
    """For each (b, h) and key tile n, the query tiles that chose n (B, H as the tiles).

    choosers: [B, H, Mq * W] int32, query tile ids grouped by key tile, ascending within a
        group, padding after the last group.
    starts: [B, H, Mk + 1] int32, key tile n's choosers are choosers[starts[n]:starts[n+1]].
    """

    choosers: torch.Tensor
    starts: torch.Tensor


def invert_tiles(tiles: torch.Tensor, count: torch.Tensor, key_tiles: int) -> TileChoosers:
    """Invert the chosen-tile lists (tiles [B, H, Mq, W] int32, the first count [B, H, Mq]
    entries valid) into per-key-tile lists of query tiles, by one stable sort per head: fixed
    shapes, no host sync."""
    bsz, heads, q_tiles, width = tiles.shape
    valid = torch.arange(width, device=tiles.device) < count[..., None]
    key = torch.where(valid, tiles.long(), key_tiles).view(bsz, heads, q_tiles * width)
    order = torch.sort(key, dim=-1, stable=True).indices
    per_key = torch.zeros(bsz, heads, key_tiles + 1, dtype=torch.int32, device=tiles.device)
    per_key.scatter_add_(-1, key, torch.ones_like(key, dtype=torch.int32))
    starts = torch.nn.functional.pad(torch.cumsum(per_key[..., :key_tiles], -1, dtype=torch.int32), (1, 0))
    return TileChoosers((order // width).to(torch.int32).contiguous(), starts.contiguous())


@triton.jit
def _query_tile(seq_len, q_len, num_heads, group, nblocks, BLOCK: tl.constexpr):
    """This program's query tile (program ids: tile from the last, batch * query head): (m, bh,
    b, h, kv head, rows_q, their positions offs_m, row_ok)."""
    m = nblocks - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    rows_q = m * BLOCK + tl.arange(0, BLOCK)
    return m, bh, b, h, h // group, rows_q, seq_len - q_len + rows_q, rows_q < q_len


@triton.jit
def _block_sparse_fwd(
    Q, K, V, Out, Lse, Tiles, Count, Active,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_ob, stride_oh, stride_os,
    seq_len, q_len, num_heads, group, nblocks, width, qk_scale,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, OWN_TILES: tl.constexpr,
):
    """Output and log-sum-exp (log2 units, +inf for a row without keys) of query tile m.
    K and V share strides (both contiguous)."""
    m, bh, b, h, hk, rows_q, offs_m, row_ok = _query_tile(seq_len, q_len, num_heads, group, nblocks, BLOCK)
    q_offset = seq_len - q_len
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows_q[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    kv = b * stride_kb + hk * stride_kh
    lanes = tl.arange(0, BLOCK)
    every = lanes >= 0
    tile = bh.to(tl.int64) * nblocks + m
    active = tl.load(Active + h)
    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    chosen = Tiles + tile * width
    for t in range(0, tl.load(Count + tile) * active):
        keys = tl.load(chosen + t) * BLOCK + lanes
        m_i, l_i, acc = _attend_keys(q, K + kv, V + kv, keys, stride_ks, stride_ks, every, every, keys,
                                     offs_m, offs_d, d_ok, m_i, l_i, acc, qk_scale, False)
    n0 = m + q_offset // BLOCK
    for j in range(0, OWN_TILES * active):
        keys = (n0 + j) * BLOCK + lanes
        ok = keys < seq_len
        m_i, l_i, acc = _attend_keys(q, K + kv, V + kv, keys, stride_ks, stride_ks, ok, ok, keys,
                                     offs_m, offs_d, d_ok, m_i, l_i, acc, qk_scale, True)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + rows_q[:, None] * stride_os + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(Lse + bh.to(tl.int64) * q_len + rows_q, lse, mask=row_ok)


@triton.jit
def _block_sparse_bwd_rows(
    Q, DO, Lse, Delta, K, V, DQ, Tiles, Count, Active,
    stride_qb, stride_qh, stride_qs,
    stride_dob, stride_doh, stride_dos,
    stride_kb, stride_kh, stride_ks,
    seq_len, q_len, num_heads, group, nblocks, width, qk_scale, sm_scale,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, OWN_TILES: tl.constexpr,
):
    """dQ of query tile m over the forward's keys; DQ has q's strides."""
    m, bh, b, h, hk, rows_q, offs_m, row_ok = _query_tile(seq_len, q_len, num_heads, group, nblocks, BLOCK)
    q_offset = seq_len - q_len
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q, do, lse, delta = _query_rows(Q, DO, Lse, Delta, b * stride_qb + h * stride_qh, b * stride_dob + h * stride_doh,
                                    bh.to(tl.int64) * q_len, rows_q, row_ok, stride_qs, stride_dos, offs_d, d_ok)
    kv = b * stride_kb + hk * stride_kh
    lanes = tl.arange(0, BLOCK)
    every = lanes >= 0
    tile = bh.to(tl.int64) * nblocks + m
    active = tl.load(Active + h)
    dq = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    chosen = Tiles + tile * width
    for t in range(0, tl.load(Count + tile) * active):
        keys = tl.load(chosen + t) * BLOCK + lanes
        dq = _grad_keys(q, do, lse, delta, K + kv, V + kv, keys, stride_ks, stride_ks, every, every, keys,
                        offs_m, offs_d, d_ok, dq, qk_scale)
    n0 = m + q_offset // BLOCK
    for j in range(0, OWN_TILES * active):
        keys = (n0 + j) * BLOCK + lanes
        ok = keys < seq_len
        dq = _grad_keys(q, do, lse, delta, K + kv, V + kv, keys, stride_ks, stride_ks, ok, ok, keys,
                        offs_m, offs_d, d_ok, dq, qk_scale)
    tl.store(DQ + b * stride_qb + h * stride_qh + rows_q[:, None] * stride_qs + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _key_tile_grads(
    Q, DO, Lse, Delta, q_base, do_base, stats_base, kt, vt, keys, key_ok, m, q_offset, q_len,
    stride_qs, stride_dos, offs_d, d_ok, dk, dv, qk_scale, MASKED: tl.constexpr, BLOCK: tl.constexpr,
):
    """(dk, dv) [bs, D] of one key tile (kt, vt: [D, bs]) plus query tile m's share; with MASKED
    only keys where key_ok and at or before the query count (an own tile)."""
    rows_q = m * BLOCK + tl.arange(0, BLOCK)
    q, do, lse, delta = _query_rows(Q, DO, Lse, Delta, q_base, do_base, stats_base, rows_q, rows_q < q_len,
                                    stride_qs, stride_dos, offs_d, d_ok)
    p = tl.exp2(tl.dot(q, kt) * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(key_ok[None, :] & (keys[None, :] <= (q_offset + rows_q)[:, None]), p, 0.0)
    ds = p * (tl.dot(do, vt) - delta[:, None])
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk)
    return dk, dv


@triton.jit
def _block_sparse_bwd_keys(
    Q, DO, Lse, Delta, K, V, DK, DV, Choosers, Starts, Active,
    stride_qb, stride_qh, stride_qs,
    stride_dob, stride_doh, stride_dos,
    stride_kb, stride_kh, stride_ks,
    seq_len, q_len, num_heads, group, nblocks, key_tiles, n_choosers, qk_scale, sm_scale,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, OWN_TILES: tl.constexpr,
):
    """dK (scaled) and dV of key tile n of one kv head, fp32, over the query heads of its group;
    DK and DV have K's strides."""
    n = tl.program_id(0)
    bhk = tl.program_id(1)
    kv_heads = num_heads // group
    b = (bhk // kv_heads).to(tl.int64)
    hk = (bhk % kv_heads).to(tl.int64)
    q_offset = seq_len - q_len
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    keys = n * BLOCK + tl.arange(0, BLOCK)
    key_ok = keys < seq_len
    kv = b * stride_kb + hk * stride_kh + keys[None, :] * stride_ks + offs_d[:, None]
    kt = tl.load(K + kv, mask=key_ok[None, :] & d_ok[:, None], other=0.0)
    vt = tl.load(V + kv, mask=key_ok[None, :] & d_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    shift = q_offset // BLOCK
    for g in range(0, group):
        h = hk * group + g
        bh = b * num_heads + h
        active = tl.load(Active + h)
        q_base = b * stride_qb + h * stride_qh
        do_base = b * stride_dob + h * stride_doh
        stats_base = bh * q_len
        starts = Starts + bh * (key_tiles + 1) + n
        choosers = Choosers + bh * n_choosers
        for i in range(tl.load(starts), tl.load(starts + 1)):
            dk, dv = _key_tile_grads(Q, DO, Lse, Delta, q_base, do_base, stats_base, kt, vt, keys, key_ok,
                                     tl.load(choosers + i), q_offset, q_len, stride_qs, stride_dos, offs_d,
                                     d_ok, dk, dv, qk_scale, False, BLOCK)
        for j in range(0, OWN_TILES * active):
            m = n - shift - j
            if (m >= 0) & (m < nblocks):
                dk, dv = _key_tile_grads(Q, DO, Lse, Delta, q_base, do_base, stats_base, kt, vt, keys, key_ok,
                                         m, q_offset, q_len, stride_qs, stride_dos, offs_d, d_ok, dk, dv,
                                         qk_scale, True, BLOCK)
    out = b * stride_kb + hk * stride_kh + keys[:, None] * stride_ks + offs_d[None, :]
    store_ok = key_ok[:, None] & d_ok[None, :]
    tl.store(DK + out, dk * sm_scale, mask=store_ok)
    tl.store(DV + out, dv, mask=store_ok)


def active_flags(q: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """[H] int32 flags on q's device from [H] bool/int flags (None: every head attends)."""
    if active is None:
        return torch.ones(q.shape[1], dtype=torch.int32, device=q.device)
    return active.to(device=q.device, dtype=torch.int32).contiguous()


def _prepare(q, count, active):
    if not q.is_cuda:
        check_interpreter()
    return active_flags(q, active), count.contiguous()


def _own_tiles(q_len: int, seq_len: int, block_size: int) -> int:
    return 2 if (seq_len - q_len) % block_size else 1


def launch_block_sparse_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tiles: torch.Tensor,
    count: torch.Tensor,
    block_size: int,
    scale: float,
    active: torch.Tensor | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention of q [B, H, Sq, D] (the last Sq of Sk positions) over k, v
    [B, Hkv, Sk, D] on the tiles of `select_block_sparse_tiles` (tiles [B, H, Mq, W], count
    [B, H, Mq] int32); active: [H] flags (None: every head). Returns (out [B, H, Sq, D],
    lse [B, H, Sq] fp32 in log2 units)."""
    active, count = _prepare(q, count, active)
    q = q if q.stride(-1) == 1 else q.contiguous()
    k, v, tiles = k.contiguous(), v.contiguous(), tiles.contiguous()
    bsz, heads, q_len, head_dim = q.shape
    seq_len = k.shape[2]
    nblocks = tiles.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _block_sparse_fwd[(nblocks, bsz * heads)](
            q, k, v, out, lse, tiles, count, active,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            seq_len, q_len, heads, heads // k.shape[1], nblocks, tiles.shape[-1], scale * LOG2E,
            BLOCK=block_size, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
            OWN_TILES=_own_tiles(q_len, seq_len, block_size), num_warps=num_warps, num_stages=num_stages,
        )
    return out, lse


def launch_block_sparse_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    tiles: torch.Tensor,
    count: torch.Tensor,
    block_size: int,
    scale: float,
    active: torch.Tensor | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `launch_block_sparse_forward` for the output gradient grad [B, H, Sq, D]
    (out, lse: that forward's results). Returns (dq [B, H, Sq, D], dk, dv [B, Hkv, Sk, D]) in
    the inputs' dtype, dk and dv summed over the query heads of each group."""
    active, count = _prepare(q, count, active)
    q, grad, k, v, lse, tiles = (t.contiguous() for t in (q, grad, k, v, lse, tiles))
    bsz, heads, q_len, head_dim = q.shape
    kv_heads, seq_len = k.shape[1], k.shape[2]
    nblocks = tiles.shape[2]
    key_tiles = triton.cdiv(seq_len, block_size)
    delta = (grad.float() * out.float()).sum(-1).contiguous()
    choosers = invert_tiles(tiles, count * active.view(1, heads, 1), key_tiles)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.empty(v.shape, dtype=torch.float32, device=v.device)
    common = dict(BLOCK=block_size, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                  OWN_TILES=_own_tiles(q_len, seq_len, block_size), num_warps=num_warps, num_stages=num_stages)
    group, qk_scale = heads // kv_heads, scale * LOG2E
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _block_sparse_bwd_rows[(nblocks, bsz * heads)](
            q, grad, lse, delta, k, v, dq, tiles, count, active,
            q.stride(0), q.stride(1), q.stride(2),
            grad.stride(0), grad.stride(1), grad.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            seq_len, q_len, heads, group, nblocks, tiles.shape[-1], qk_scale, scale, **common,
        )
        _block_sparse_bwd_keys[(key_tiles, bsz * kv_heads)](
            q, grad, lse, delta, k, v, dk, dv, choosers.choosers, choosers.starts, active,
            q.stride(0), q.stride(1), q.stride(2),
            grad.stride(0), grad.stride(1), grad.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            seq_len, q_len, heads, group, nblocks, key_tiles, choosers.choosers.shape[-1], qk_scale, scale,
            **common,
        )
    return dq, dk.to(k.dtype), dv.to(v.dtype)
