"""Triton kernel: each query tile's best key tiles, by a radix search for the k-th score.

One program per row m of a [B, H, Mq, Mk] tile-score matrix, whose diagonal is n0 = m + shift
(queries after cached keys: shift = (Sk - Sq) // bs). The scores n <= n0 (causal) are
mapped to integers that sort like the floats; a radix search, one 256-bin histogram per 8
bits (2 passes for bf16/fp16, 4 for fp32), finds the k-th largest, and the tiles above it
(ties: lowest tiles first) are written in ascending order, without sorting. Every pass reads
only the causal part n <= m of the row, in chunks, so the work is a triangle, not the square.
Top 100 of 4096 tiles at 256K, 32 heads, H100: 3.3 ms in chunks of 512 with 2 warps (3.8 ms
with 1024 and 4 warps), against 5.2 ms counting 2 bits per pass by compares with 4
candidates and 8.8 ms for torch.topk.

Ascending order also helps FlexAttention: programs of neighbouring query tiles then walk K/V
in the same direction, which keeps more of it in L2 (block-sparse top-100 at 256K on H100:
86.2 ms against 92.4 ms unsorted).
"""

from __future__ import annotations

import contextlib

import torch

from .._interpreter import check_interpreter  # sets TRITON_INTERPRET without a GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _order_keys(Bits, row, nblocks, offs, valid, KEY_BITS: tl.constexpr):
    """Integer keys >= 0 that sort like the scores' floats (raw 16- or 32-bit patterns: the
    magnitude bits of negatives are flipped, then the sign is offset away); -1 where invalid.
    nblocks: the row length Mk."""
    bits = tl.load(Bits + row * nblocks + offs, mask=valid, other=0)
    if KEY_BITS == 16:
        bits = bits.to(tl.int32)
        key = (bits ^ ((bits >> 15) & 0x7FFF)) + 32768
    else:
        key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648
    return tl.where(valid, key, -1)


@triton.jit
def _kth_key_by_histogram(
    Bits, row, nblocks, m, want, lanes, CHUNK: tl.constexpr, KEY_BITS: tl.constexpr,
):
    """(k-th largest key, number of keys above it) of row `row`'s part n <= m, 8 bits per pass
    (2 passes for 16-bit keys, 4 for 32-bit): a 256-bin histogram of the next digit of the keys
    that share the prefix found so far picks the digit; the keys above the prefix are counted
    on the way."""
    bins = tl.arange(0, 256)
    if KEY_BITS == 16:
        kth = m * 0
    else:
        kth = m.to(tl.int64) * 0
    n_greater = m * 0
    for i in range(0, KEY_BITS // 8):
        shift = KEY_BITS - 8 * (i + 1)
        hist = tl.zeros([256], dtype=tl.int32)
        for start in range(0, m + 1, CHUNK):
            offs = start + lanes
            key = _order_keys(Bits, row, nblocks, offs, offs <= m, KEY_BITS)
            # invalid keys are -1, so they never share the (non-negative) prefix
            same_prefix = (key >> (shift + 8)) == (kth >> (shift + 8))
            digit = tl.where(same_prefix, (key >> shift) & 255, 0).to(tl.int32)
            # the others were binned as digit 0: take them out again
            others = tl.sum((~same_prefix).to(tl.int32), 0)
            hist += tl.histogram(digit, 256) - tl.where(bins == 0, others, 0)
        at_or_above = n_greater + tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
        best = tl.sum((at_or_above >= want).to(tl.int32), 0) - 1
        n_greater += tl.sum(tl.where(bins > best, hist, 0), 0)
        kth = kth + (best.to(kth.dtype) << shift)
    return kth, n_greater


@triton.jit
def _top_tiles(
    Bits, Tiles, Count, q_blocks, nblocks, shift, width, topk,
    CHUNK: tl.constexpr, KEY_BITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    m = (row % q_blocks).to(tl.int32) + shift  # the diagonal key tile
    want = tl.minimum(topk, m + 1)
    lanes = tl.arange(0, CHUNK)
    kth, n_greater = _kth_key_by_histogram(Bits, row, nblocks, m, want, lanes, CHUNK, KEY_BITS)
    # keep the keys above kth and the first ties (lowest tiles) up to `want`, minus the
    # diagonal (the caller adds it); write them in ascending order
    ties_left = want - n_greater
    written = m * 0
    for start in range(0, m + 1, CHUNK):
        offs = start + lanes
        key = _order_keys(Bits, row, nblocks, offs, offs <= m, KEY_BITS)
        ties = key == kth
        tie_rank = tl.cumsum(ties.to(tl.int32), 0)
        keep = ((key > kth) | (ties & (tie_rank <= ties_left))) & (offs != m)
        slot = written + tl.cumsum(keep.to(tl.int32), 0) - 1
        tl.store(Tiles + row * width + slot, offs, mask=keep)
        written += tl.sum(keep.to(tl.int32), 0)
        ties_left -= tl.sum(ties.to(tl.int32), 0)
    tl.store(Count + row, written)


def launch_top_tiles(
    scores: torch.Tensor,
    topk: int,
    shift: int = 0,
    chunk: int | None = None,
    num_warps: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, Mq, Mk] (row m scores key tiles n; entries n > m + shift are ignored),
    topk >= 1, shift >= 0 with Mq + shift <= Mk -> (tiles [B, H, Mq, W] int32 with
    W = min(topk, Mk), count [B, H, Mq] int32).

    Row m keeps the min(topk, n0 + 1) best tiles n <= n0 = m + shift, ties broken towards
    lower n, then drops the diagonal n0; the count kept tiles are in ascending order, the
    rest is Mk.
    chunk (keys per step of a pass) and num_warps are launch parameters; the result does not
    depend on them. Defaults measured on H100 (perf/tune_kernels.py --only bs, 256K).
    """
    if not scores.is_cuda:
        check_interpreter()
    scores = scores.contiguous()
    bsz, heads, q_blocks, nblocks = scores.shape
    key_bits = 8 * scores.element_size()
    if key_bits not in (16, 32):
        raise TypeError(f"top_tiles takes fp32, bf16 or fp16 scores, got {scores.dtype}")
    bits = scores.view(torch.int16 if key_bits == 16 else torch.int32)
    width = min(topk, nblocks)
    tiles = torch.full((bsz, heads, q_blocks, width), nblocks, dtype=torch.int32, device=scores.device)
    count = torch.empty(bsz, heads, q_blocks, dtype=torch.int32, device=scores.device)
    chunk = chunk or min(512, max(16, triton.next_power_of_2(nblocks)))
    with torch.cuda.device(scores.device) if scores.is_cuda else contextlib.nullcontext():
        _top_tiles[(bsz * heads * q_blocks,)](
            bits, tiles, count, q_blocks, nblocks, shift, width, topk,
            CHUNK=chunk, KEY_BITS=key_bits, num_warps=num_warps,
        )
    return tiles, count
