"""Triton kernels: softmax of the last queries' scores summed down columns and diagonals.

Input: scores [B, H, L, S] of the last L queries (query a sits at position S - L + a)
against every key, in the model's dtype. Two passes over the scores, never an fp32 copy:
1. `_row_stats`: per query row and split of the keys, the max and the sum of exp over the
   keys it sees (causal in the last L x L corner), in fp32; splits keep the GPU busy.
2. `_column_and_diagonal_sums`: per tile of BLOCK_N positions, the soft-maxed probabilities
   summed over the rows down each key column j (vertical score of j) and along each diagonal
   offset s = (S - L + a) - j (slash score of s). The diagonal is read as a sheared tile
   straight from memory, so every output is written once, with no atomics.
"""

from __future__ import annotations

import contextlib

import torch

from .._interpreter import check_interpreter  # sets TRITON_INTERPRET without a GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _row_stats(Scores, PartMax, PartSum, seq_len, last_q, span, BLOCK: tl.constexpr):
    """Per (row, split): max of x*log2(e) and sum of 2^(x*log2(e) - max) over the keys
    j <= S - L + a in [split*span, (split+1)*span)."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    limit = seq_len - last_q + row % last_q
    base = Scores + row.to(tl.int64) * seq_len
    run_max = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(split * span, (split + 1) * span, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs <= limit, other=float("-inf")).to(tl.float32) * 1.4426950408889634
        new_max = tl.maximum(run_max, x)
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp2(run_max - safe) + tl.exp2(x - safe)
        run_max = new_max
    part_max = tl.max(run_max, 0)
    safe = tl.where(part_max == float("-inf"), 0.0, part_max)
    tl.store(PartMax + row * n_splits + split, part_max)
    tl.store(PartSum + row * n_splits + split, tl.sum(run_sum * tl.exp2(run_max - safe), 0))


@triton.jit
def _column_and_diagonal_sums(
    Scores, PartMax, PartSum, Vertical, Slash, seq_len, last_q, n_splits,
    BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SPLIT: tl.constexpr,
    COLUMNS: tl.constexpr, DIAGONALS: tl.constexpr,
):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs = n * BLOCK_N + tl.arange(0, BLOCK_N)
    # diagonal lanes run backwards, so that the keys each row reads are ascending
    offs_s = n * BLOCK_N + BLOCK_N - 1 - tl.arange(0, BLOCK_N)
    base = Scores + bh * last_q * seq_len
    splits = tl.arange(0, BLOCK_SPLIT)
    vertical = tl.zeros([BLOCK_N], dtype=tl.float32)
    slash = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r0 in range(0, last_q, BLOCK_L):
        rows = r0 + tl.arange(0, BLOCK_L)
        row_ok = rows < last_q
        # combine the rows' partial (max, sum) over the key splits
        part = (bh * last_q + rows)[:, None] * n_splits + splits[None, :]
        part_ok = row_ok[:, None] & (splits[None, :] < n_splits)
        part_max = tl.load(PartMax + part, mask=part_ok, other=float("-inf"))
        part_sum = tl.load(PartSum + part, mask=part_ok, other=0.0)
        row_max = tl.max(part_max, 1)
        row_max = tl.where(row_ok, row_max, 0.0)
        row_sum = tl.sum(part_sum * tl.exp2(part_max - row_max[:, None]), 1)
        inv_sum = 1.0 / tl.where(row_ok, row_sum, 1.0)
        row_ptr = base + rows[:, None].to(tl.int64) * seq_len
        pos = seq_len - last_q + rows[:, None]  # the query's position = last key it sees

        if COLUMNS:  # column j = offs: rows that see it
            ok = row_ok[:, None] & (offs[None, :] <= pos)
            x = tl.load(row_ptr + offs[None, :], mask=ok, other=float("-inf")).to(tl.float32)
            p = tl.exp2(x * 1.4426950408889634 - row_max[:, None]) * inv_sum[:, None]
            vertical += tl.sum(p, 0)

        if DIAGONALS:  # diagonal s = offs_s: key pos - s in every row that reaches it
            key = pos - offs_s[None, :]
            ok = row_ok[:, None] & (offs_s[None, :] < seq_len) & (key >= 0)
            x = tl.load(row_ptr + key, mask=ok, other=float("-inf")).to(tl.float32)
            p = tl.exp2(x * 1.4426950408889634 - row_max[:, None]) * inv_sum[:, None]
            slash += tl.sum(p, 0)
    if COLUMNS:
        tl.store(Vertical + bh * seq_len + offs, vertical, mask=offs < seq_len)
    if DIAGONALS:
        tl.store(Slash + bh * seq_len + offs_s, slash, mask=offs_s < seq_len)


def _row_stats_launch(scores: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    bsz, heads, last_q, seq_len = scores.shape
    rows = bsz * heads * last_q
    n_splits = min(32, triton.cdiv(seq_len, block))
    span = triton.cdiv(triton.cdiv(seq_len, n_splits), block) * block
    part_max = torch.empty(rows, n_splits, dtype=torch.float32, device=scores.device)
    part_sum = torch.empty_like(part_max)
    _row_stats[(rows, n_splits)](scores, part_max, part_sum, seq_len, last_q, span, BLOCK=block, num_warps=4)
    return part_max, part_sum


def _sums_launch(
    scores: torch.Tensor, part_max: torch.Tensor, part_sum: torch.Tensor,
    block_l: int = 2, block_n: int = 2048, num_warps: int = 4, columns: bool = True, diagonals: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    # defaults: 2 rows x 2048 keys per step, 4 warps: 0.80 ms at 256K on H100, against 1.75 ms
    # with 8 x 512 and 3.48 ms with 64 x 256 and 8 warps (perf/tune_kernels.py --only estimate)
    bsz, heads, last_q, seq_len = scores.shape
    vertical, slash = (
        torch.empty(bsz, heads, seq_len if wanted else 0, dtype=torch.float32, device=scores.device)
        for wanted in (columns, diagonals)
    )
    n_splits = part_max.shape[1]
    _column_and_diagonal_sums[(triton.cdiv(seq_len, block_n), bsz * heads)](
        scores, part_max, part_sum, vertical, slash, seq_len, last_q, n_splits,
        BLOCK_L=block_l, BLOCK_N=block_n, BLOCK_SPLIT=max(2, triton.next_power_of_2(n_splits)),
        COLUMNS=columns, DIAGONALS=diagonals, num_warps=num_warps,
    )
    return vertical, slash


def launch_vertical_slash_scores(
    scores: torch.Tensor, columns: bool = True, diagonals: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, H, L, S] (any float dtype) -> (vertical, slash), each [B, H, S] fp32.

    vertical[j] = sum_a P[a, j] and slash[s] = sum_a P[a, S - L + a - s], where P is the
    fp32 softmax of each row over the keys j <= S - L + a. With columns (diagonals) False,
    vertical (slash) is not computed and comes back empty, [B, H, 0].
    """
    if not scores.is_cuda:
        check_interpreter()
    scores = scores.contiguous()
    on_gpu = scores.is_cuda
    with torch.cuda.device(scores.device) if on_gpu else contextlib.nullcontext():
        part_max, part_sum = _row_stats_launch(scores, 1024 if on_gpu else 128)
        if on_gpu:
            return _sums_launch(scores, part_max, part_sum, columns=columns, diagonals=diagonals)
        return _sums_launch(scores, part_max, part_sum, block_l=8, block_n=64, columns=columns, diagonals=diagonals)
