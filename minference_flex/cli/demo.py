"""`python -m minference_flex demo`: each sparse pattern against dense attention.

On CPU: a few thousand tokens (the vertical-slash kernel runs in Triton's interpreter). On a
GPU: 128K tokens in bf16. Inputs carry attention structure of the kind MInference describes
(sink tokens, a local band, a few retrieval columns), so that the error against dense
attention means something; the estimators find that structure themselves.
"""

from __future__ import annotations

import math
import time

import torch

from minference_flex.ops.attention import (
    block_sparse_attention,
    dense_attention,
    dynamic_vertical_slash_attention,
    streaming_forward,
)


def structured_qkv(
    batch: int, heads: int, kv_heads: int, seq_len: int, head_dim: int, dtype, device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, H, S, D], k and v [B, Hkv, S, D] whose attention has sinks, a local band and columns.

    Rotary features in half the dimensions make q_i . k_j peak at i = j and fall off with
    |i - j| (the local band, with echoes at the features' periods: far diagonals); keys
    0..3 and 8 random keys share a direction every query looks along (sinks and retrieval
    columns, about as strong as the band); the rest is noise.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    half = head_dim // 2
    angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * (
        0.5 * 0.7 ** torch.arange(half // 2, dtype=torch.float32)
    )
    rotary = torch.cat([angles.cos(), angles.sin()], -1) * 3.0
    q = torch.randn(batch, heads, seq_len, head_dim, generator=gen) * 0.5
    k = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen) * 0.5
    v = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen)
    q[..., :half] += rotary
    k[..., :half] += rotary
    look = torch.randn(head_dim - half, generator=gen)
    look = look / look.norm() * 11.0
    q[..., half:] += look
    columns = torch.cat([torch.arange(4), torch.randint(4, seq_len, (8,), generator=gen)])
    k[:, :, columns, half:] += look
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def timed(fn, device) -> tuple[torch.Tensor, float]:
    """(fn(), seconds) of a second, warm call of fn (the first compiles and warms up)."""
    fn()  # compile / warm up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def run_demo(seq_len: int | None = None, device: str | None = None) -> list[dict]:
    """Run every pattern once warm and print time and error against dense attention."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = dev.type == "cuda"
    seq_len = seq_len or (131072 if on_gpu else 2048)
    heads, kv_heads, head_dim = (32, 8, 128) if on_gpu else (4, 2, 64)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    print(f"minference_flex demo: {dev.type}, S={seq_len}, heads {heads}/{kv_heads}, "
          f"head_dim {head_dim}, {dtype}")
    q, k, v = structured_qkv(1, heads, kv_heads, seq_len, head_dim, dtype, dev)
    # MInference's budgets are made for 128K+; on a short CPU prompt they are near-dense
    vs_budgets = [(1000, 6096), (30, 800)] if on_gpu else [(100, 100)]
    topk = 100 if on_gpu else 4
    local = 4096 if on_gpu else seq_len // 16
    runs = {"dense (dense_attention)": lambda: dense_attention(q, k, v)}
    runs[f"A-shape (init 128, local {local})"] = lambda: streaming_forward(q, k, v, 128, local)
    for nv, ns in vs_budgets:
        runs[f"vertical-slash ({nv}, {ns}), estimated"] = (
            lambda nv=nv, ns=ns: dynamic_vertical_slash_attention(q, k, v, nv, ns)
        )
    runs[f"block-sparse (top {topk} of 64)"] = lambda: block_sparse_attention(q, k, v, topk)
    dense = None
    rows = []
    if not on_gpu:
        print("(no GPU: FlexAttention runs compiled for CPU, the Triton kernel in its interpreter)")
    print(f"{'pattern':42s} {'time':>10s} {'rel. error vs dense':>20s}")
    for name, fn in runs.items():
        print(f"{name:42s}", end=" ", flush=True)
        out, seconds = timed(fn, dev)
        if dense is None:
            dense = out.float()
        err = ((out.float() - dense).norm() / dense.norm()).item()
        rows.append({"pattern": name, "seconds": seconds, "relative_error": err})
        print(f"{seconds * 1e3:8.1f}ms {err:20.2e}")
    if not math.isfinite(sum(r["relative_error"] for r in rows)):
        raise RuntimeError("a pattern produced NaN or inf")
    return rows
