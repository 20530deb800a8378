"""Validation of user input to the public kernel API.

Every check raises ValueError or TypeError naming the argument, what was expected, what was
given and how to fix it. Checks look only at metadata (shapes, dtypes, devices, Python
numbers), never at tensor values, so they cost no device sync, and they run while
torch.compile traces too (a shape check there becomes a guard), where a bad shape would
otherwise reach a kernel.
"""

from __future__ import annotations

import math
import numbers

import torch

#: Dtypes the kernels take on a CUDA device and on the CPU.
CUDA_DTYPES = (torch.float16, torch.bfloat16)
CPU_DTYPES = (torch.float32, torch.float16)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Check q [B, H, Sq, D] and k, v [B, Hkv, Sk, D], Sq <= Sk, for a causal pre-fill whose
    queries are the last Sq positions of the keys."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions [batch, heads, seq, head_dim], got shape "
                f"{tuple(t.shape)}; transpose a [batch, seq, heads, head_dim] tensor with "
                f".transpose(1, 2)"
            )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    bq, hq, sq, dq = q.shape
    bk, hk, sk, dk = k.shape
    if bq != bk:
        raise ValueError(f"q and k must have the same batch size, got {bq} and {bk}")
    if sq > sk:
        raise ValueError(
            f"q has more positions ({sq}) than k and v ({sk}): the queries are the last Sq of the Sk "
            f"key positions, so Sq <= Sk; pass the keys of every position up to the last query"
        )
    if dq != dk:
        raise ValueError(f"q and k must have the same head_dim, got {dq} and {dk}")
    if hk == 0 or hq % hk != 0:
        raise ValueError(
            f"q heads ({hq}) must be a multiple of k/v heads ({hk}) for grouped-query attention"
        )
    if sq == 0:
        raise ValueError("q has 0 positions: there is nothing to attend")
    if hq == 0 or dq == 0:
        raise ValueError(f"q has {hq} heads of head_dim {dq}: both must be >= 1")
    if dq > 256:
        raise ValueError(f"head_dim must be at most 256, got {dq}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}; move them "
            f"with .to(q.device)"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}; cast them with "
            f".to(q.dtype)"
        )
    allowed = CUDA_DTYPES if q.device.type == "cuda" else CPU_DTYPES
    if q.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise TypeError(f"q, k and v on {q.device.type} must be one of {names}, got {q.dtype}")


def check_nonnegative_int(name: str, value: object, minimum: int = 0) -> int:
    """Return `value` as an int after checking it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_block_size(block_size: object) -> int:
    """Block sizes are powers of two from 16 to 128 (Triton and FlexAttention tiles)."""
    block_size = check_nonnegative_int("block_size", block_size, minimum=1)
    if block_size not in (16, 32, 64, 128):
        raise ValueError(f"block_size must be one of 16, 32, 64, 128, got {block_size}")
    return block_size


def check_index(name: str, idx: torch.Tensor, q: torch.Tensor) -> None:
    """Check an index tensor [B, H, N] of integer positions matching q [B, H, S, D]."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer positions, got {type(idx).__name__}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {idx.dtype}; cast it with .long()")
    if idx.dim() != 3 or idx.shape[0] != q.shape[0] or idx.shape[1] != q.shape[1]:
        raise ValueError(
            f"{name} must have shape [batch={q.shape[0]}, heads={q.shape[1]}, N] (one row per query "
            f"head), got {tuple(idx.shape)}"
        )
    if idx.device != q.device:
        raise ValueError(f"{name} must be on {q.device} like q, got {idx.device}")


def check_budgets(name: str, value: object, heads: int) -> list[int]:
    """One non-negative int for all heads, or a sequence of `heads` of them; returns the list."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [check_nonnegative_int(name, value)] * heads
    if isinstance(value, (list, tuple)):
        if len(value) != heads:
            raise ValueError(f"{name} must have one budget per query head ({heads}), got {len(value)}")
        return [check_nonnegative_int(f"{name}[{h}]", v) for h, v in enumerate(value)]
    raise TypeError(f"{name} must be an int or a sequence of ints, got {type(value).__name__} ({value!r})")


def check_scale(scale: object) -> float:
    """A softmax scale: a finite real number > 0 (None, the default 1/sqrt(D), is the caller's)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a positive float (or None for 1/sqrt(head_dim)), got {type(scale).__name__} ({scale!r})")
    if not 0 < scale < math.inf:  # NaN too; plain comparisons, which torch.compile traces
        raise ValueError(f"scale must be a finite float > 0 (or None for 1/sqrt(head_dim)), got {scale!r}; "
                         f"a scale written 1 // math.sqrt(D) is 0: use D ** -0.5")
    return float(scale)
