"""Triton kernel: merge two attention outputs over disjoint key sets by their log-sum-exp.

One program per (block of rows, batch x head). Reads both outputs and log-sum-exps once and
writes the merged rows straight into a slice of the caller's output, so a chunk of rows costs
one read of each part and one write (256K tokens, 32 heads, D=128, half the rows: 1.1 ms on
H100). FlexAttention's key-range passes merge inside their compiled graph instead
(`minference_flex.ops.flex.merge_by_lse`, which Inductor fuses).
"""

from __future__ import annotations

import contextlib

import torch

from .._interpreter import check_interpreter  # sets TRITON_INTERPRET without a GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _merge_two(
    A, B, LseA, LseB, Out, rows, heads,
    sab, sah, sar, sbb, sbh, sbr, sob, soh, sor, slab, slah, slbb, slbh,
    DIM: tl.constexpr, DIM_P2: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    d = tl.arange(0, DIM_P2)
    live = r < rows
    both = live[:, None] & (d[None, :] < DIM)
    la = tl.load(LseA + b * slab + h * slah + r, mask=live, other=0.0)
    lb = tl.load(LseB + b * slbb + h * slbh + r, mask=live, other=0.0)
    top = tl.maximum(la, lb)
    wa = tl.exp(la - top)
    wb = tl.exp(lb - top)
    total = wa + wb
    wa = wa / total
    wb = wb / total
    xa = tl.load(A + b * sab + h * sah + r[:, None] * sar + d[None, :], mask=both, other=0.0).to(tl.float32)
    xb = tl.load(B + b * sbb + h * sbh + r[:, None] * sbr + d[None, :], mask=both, other=0.0).to(tl.float32)
    # a part with no keys in a row (lse -inf) has weight 0 and its output is not read
    merged = tl.where(wa[:, None] > 0, xa * wa[:, None], 0.0) + tl.where(wb[:, None] > 0, xb * wb[:, None], 0.0)
    tl.store(Out + b * sob + h * soh + r[:, None] * sor + d[None, :], merged.to(Out.dtype.element_ty), mask=both)


def merge_two_into(
    out: torch.Tensor, a: torch.Tensor, lse_a: torch.Tensor, b: torch.Tensor, lse_b: torch.Tensor
) -> None:
    """out[...] = attention over the union of two disjoint key sets, in place.

    a, b, out: [B, H, L, D] (any strides with a unit last one; out may be a slice), a and b
    each normalised over its own keys; lse_a, lse_b: [B, H, L] or [B, H, L, 1] fp32, natural
    log-sum-exp of the scaled scores over those keys. Weights exp(lse - logaddexp) in fp32.
    """
    bsz, heads, rows, dim = out.shape
    lse_a, lse_b = (x.reshape(bsz, heads, rows) for x in (lse_a, lse_b))
    for name, t in (("a", a), ("b", b), ("out", out), ("lse_a", lse_a), ("lse_b", lse_b)):
        if t.stride(-1) != 1:
            raise ValueError(f"merge_two_into: {name} needs a unit last stride; pass {name}.contiguous()")
    if not out.is_cuda:
        check_interpreter()
    block_rows = 64
    # Triton launches on the current CUDA device: a layer placed on another GPU by a device
    # map must launch on its own
    with torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext():
        _merge_two[(triton.cdiv(rows, block_rows), bsz * heads)](
            a, b, lse_a, lse_b, out, rows, heads,
            a.stride(0), a.stride(1), a.stride(2), b.stride(0), b.stride(1), b.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            lse_a.stride(0), lse_a.stride(1), lse_b.stride(0), lse_b.stride(1),
            DIM=dim, DIM_P2=triton.next_power_of_2(dim), BLOCK_ROWS=block_rows, num_warps=4,
        )
