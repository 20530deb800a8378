"""Launch-configuration sweeps for the kernels (GPU). Prints one line per variant.

    python perf/tune_kernels.py --seq-len 131072
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction  # noqa: E402
from custom_ops.vertical_slash.kernel import launch_vertical_slash  # noqa: E402
from minference_flex.estimate import select_block_sparse_tiles  # noqa: E402
from minference_flex.flex import a_shape_block_mask, block_sparse_block_mask  # noqa: E402
from perf.common import median_ms  # noqa: E402


def sweep_vertical_slash(q, k, v, budgets):
    for nv, ns in budgets:
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)
        index = build_vertical_slash_index(v_idx, s_idx, q.shape[2], 64)
        frac = computed_fraction(index, 64).item()
        for masked in (True, False):
            for stages in (2, 3, 4):
                ms = median_ms(lambda: launch_vertical_slash(q, k, v, index, 64, 0.088, 4, stages, masked))
                print(f"vs ({nv},{ns}) frac={frac:.3f} stages={stages} mask_loads={masked}: {ms:.2f} ms")


def sweep_flex(q, k, v, name, mask, options):
    from torch.nn.attention.flex_attention import flex_attention

    for opts in options:
        torch._dynamo.reset()
        compiled = torch.compile(flex_attention, dynamic=False)
        try:
            fn = lambda: compiled(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=opts)  # noqa: E731
            ms = median_ms(fn)
        except Exception as exc:
            print(f"{name} {opts}: {type(exc).__name__} {str(exc)[:120]}")
            continue
        print(f"{name} {opts}: {ms:.2f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=131072)
    args = parser.parse_args()
    s = args.seq_len
    q = torch.randn(1, 32, s, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, s, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    print("estimate (3500,100):", median_ms(lambda: mf.estimate_vertical_slash(q, k, 3500, 100)), "ms")
    from minference_flex.estimate import pool_tiles
    print("pool q:", median_ms(lambda: pool_tiles(q, 64)), "ms")
    pq, pk = pool_tiles(q, 64), pool_tiles(k, 64)
    sc = torch.matmul(pq.view(1, 8, 4 * pq.shape[2], 128), pk.transpose(-1, -2)).view(1, 32, pq.shape[2], -1)
    print("scores matmul:", median_ms(lambda: torch.matmul(pq.view(1, 8, 4 * pq.shape[2], 128), pk.transpose(-1, -2))), "ms")
    print("topk 100 fp32:", median_ms(lambda: sc.topk(100, dim=-1, sorted=False)), "ms")
    print("topk 100 bf16:", median_ms(lambda: sc.bfloat16().topk(100, dim=-1, sorted=False)), "ms")
    idx = sc.topk(100, dim=-1, sorted=False).indices
    print("sort 100:", median_ms(lambda: idx.sort(dim=-1)), "ms")
    print("block-sparse tiles+mask:", median_ms(lambda: block_sparse_block_mask(*select_block_sparse_tiles(q, k, 100, 64), s, 64)), "ms")
    print("select tiles only:", median_ms(lambda: select_block_sparse_tiles(q, k, 100, 64)), "ms")
    sweep_vertical_slash(q, k, v, [(3500, 100), (30, 800)])
    from perf.planted import planted_vertical_slash
    for nv, ns in [(3500, 100), (30, 800), (1000, 6096)]:
        vi, si = planted_vertical_slash(1, 32, s, nv, ns, "cuda")
        index = build_vertical_slash_index(vi, si, s, 64)
        frac = computed_fraction(index, 64).item()
        ms = median_ms(lambda: launch_vertical_slash(q, k, v, index, 64, 0.088, 4, 3, True))
        print(f"vs planted ({nv},{ns}) frac={frac:.3f}: {ms:.2f} ms")
    bs_mask = block_sparse_block_mask(*select_block_sparse_tiles(q, k, 100, 64), s, 64)
    sweep_flex(q, k, v, "block-sparse", bs_mask, [
        {"BLOCK_M": 64, "BLOCK_N": 64},
        {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
        {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
        {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 4},
        {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    ])
    a_mask = a_shape_block_mask(1, 32, s, 128, 4096, q.device)
    sweep_flex(q, k, v, "a-shape", a_mask, [
        {"BLOCK_M": 128, "BLOCK_N": 64},
        {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4},
        {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
        {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
    ])
    for blk in (64, 128):
        a_mask = a_shape_block_mask(1, 32, s, 128, 4096, q.device, block=blk)
        print(f"a-shape mask block {blk}: build", median_ms(lambda: a_shape_block_mask(1, 32, s, 128, 4096, q.device, block=blk)), "ms")
        sweep_flex(q, k, v, f"a-shape-mask{blk}", a_mask, [{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}] if blk == 64 else [{"BLOCK_M": 128, "BLOCK_N": 64}])


if __name__ == "__main__":
    main()
