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
from custom_ops.vertical_slash import build_vertical_slash_index  # noqa: E402
from custom_ops.vertical_slash.kernel import launch_vertical_slash  # noqa: E402
from minference_flex.estimate import select_block_sparse_tiles  # noqa: E402
from minference_flex.flex import a_shape_block_mask, block_sparse_block_mask  # noqa: E402
from perf.common import median_ms  # noqa: E402


def sweep_vertical_slash(q, k, v, budgets):
    for nv, ns in budgets:
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)
        index = build_vertical_slash_index(v_idx, s_idx, q.shape[2], 64)
        for warps in (4, 8):
            for stages in (2, 3, 4, 5):
                try:
                    ms = median_ms(lambda: launch_vertical_slash(q, k, v, index, 64, 0.088, warps, stages))
                except Exception as exc:  # a config may not fit in shared memory
                    print(f"vs ({nv},{ns}) warps={warps} stages={stages}: {type(exc).__name__}")
                    continue
                print(f"vs ({nv},{ns}) warps={warps} stages={stages}: {ms:.2f} ms")


def sweep_flex(q, k, v, name, mask, options):
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    for opts in options:
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
    print("block-sparse tiles+mask:", median_ms(lambda: block_sparse_block_mask(*select_block_sparse_tiles(q, k, 100, 64), s, 64)), "ms")
    print("select tiles only:", median_ms(lambda: select_block_sparse_tiles(q, k, 100, 64)), "ms")
    sweep_vertical_slash(q, k, v, [(3500, 100), (30, 800)])
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
        {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
        {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
        {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    ])


if __name__ == "__main__":
    main()
