"""Training benchmark: forward + backward of each sparse pattern against cuDNN SDPA forward +
backward, in the same run.

B=1, 32 query / 8 kv heads, D=128, bf16 by default. Every sparse figure includes estimation
and index/mask building (the backward of vertical-slash rebuilds its index). Columns:
- ms / x_cudnn: forward + backward (`torch.autograd.grad` of q, k, v for a random output
  gradient), and its ratio to cuDNN SDPA's forward + backward (K/V repeated outside the timed
  region, as cuDNN's best);
- fwd_ms, bwd_ms: the forward alone (grad-enabled: it saves what the backward needs) and the
  backward alone (the same graph, retained);
- bwd_tile_tflops: backward FLOPs of the tiles the vertical-slash kernels compute (2.5x the
  forward's per tile, as for dense attention) over the backward time, beside cuDNN's
  backward TFLOP/s on the dense causal tiles (`cudnn_bwd_tflops`).
Goals (issue 18, 128K): vertical-slash (3500, 100) <= 0.10, (30, 800) <= 0.50, block-sparse
top 100 <= 0.20, A-shape (128, 4096) <= 0.12; backward tile rate >= 60% of cuDNN's.

Usage (on a GPU):
    python perf/bench_train.py --lengths 131072 --out perf/results/train.json
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction  # noqa: E402
from perf.common import machine, median_ms, write_json  # noqa: E402
from perf.planted import planted_vertical_slash  # noqa: E402

VS_BUDGETS = [(3500, 100), (30, 800)]
GOALS = {"vertical-slash (3500, 100)": 0.10, "vertical-slash (30, 800)": 0.50,
         "block-sparse top 100 of 64": 0.20, "A-shape (128, 4096)": 0.12}


def _timings(attend, inputs, grad_out, rep_ms):
    """(fwd+bwd ms, fwd ms, bwd ms) of attend(*inputs) with gradients to `inputs`."""
    def step():
        return torch.autograd.grad(attend(*inputs), inputs, grad_out)

    def forward():
        return attend(*inputs)

    total = median_ms(step, rep_ms=rep_ms)
    fwd = median_ms(forward, rep_ms=rep_ms)
    out = attend(*inputs)
    bwd = median_ms(lambda: torch.autograd.grad(out, inputs, grad_out, retain_graph=True), rep_ms=rep_ms)
    del out
    return total, fwd, bwd


def bench_length(seq_len, heads, kv_heads, head_dim, modes, rep_ms, vs_budgets=VS_BUDGETS, flex=True):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    dtype = torch.bfloat16
    q = torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv_heads, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(1, kv_heads, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    grad_out = torch.randn(q.shape, device="cuda", dtype=dtype)
    group = heads // kv_heads
    k_rep = k.detach().repeat_interleave(group, 1).requires_grad_()
    v_rep = v.detach().repeat_interleave(group, 1).requires_grad_()

    def cudnn(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    t_cudnn, f_cudnn, b_cudnn = _timings(cudnn, (q, k_rep, v_rep), grad_out, rep_ms)
    del k_rep, v_rep
    dense_flops = 4 * heads * head_dim * seq_len * seq_len / 2
    cudnn_bwd_tflops = 2.5 * dense_flops / b_cudnn / 1e9

    def add(name, mode, times, **extra):
        total, fwd, bwd = times
        rows.append({"S": seq_len, "pattern": name, "mode": mode, "ms": total, "x_cudnn": total / t_cudnn,
                     "fwd_ms": fwd, "bwd_ms": bwd, "goal": GOALS.get(name, ""), **extra})

    add("dense SDPA cuDNN", "-", (t_cudnn, f_cudnn, b_cudnn), tflops_bwd=cudnn_bwd_tflops)
    add("dense_attention (op, recomputing backward)", "-", _timings(mf.dense_attention, (q, k, v), grad_out, rep_ms))

    for nv, ns in vs_budgets:
        for mode in modes:
            if mode == "random":
                v_idx, s_idx = mf.estimate_vertical_slash(q.detach(), k.detach(), nv, ns)

                def attend(q, k, v, nv=nv, ns=ns):
                    return mf.dynamic_vertical_slash_attention(q, k, v, nv, ns)
            else:
                v_idx, s_idx = planted_vertical_slash(1, heads, seq_len, nv, ns, "cuda")

                def attend(q, k, v, nv=nv, ns=ns, v_idx=v_idx, s_idx=s_idx):
                    mf.estimate_vertical_slash(q, k, nv, ns)  # its cost, not its indices
                    return mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx)

            frac = computed_fraction(build_vertical_slash_index(v_idx, s_idx, seq_len, 64), 64).item()
            times = _timings(attend, (q, k, v), grad_out, rep_ms)
            tile_flops = 2.5 * frac * dense_flops * (seq_len / 64 + 1) / (seq_len / 64)
            add(f"vertical-slash ({nv}, {ns})", mode, times, computed_fraction=frac,
                bwd_tile_tflops=tile_flops / times[2] / 1e9, cudnn_bwd_tflops=cudnn_bwd_tflops)

    if flex:
        add("block-sparse top 100 of 64", "random",
            _timings(lambda q, k, v: mf.block_sparse_attention(q, k, v, 100), (q, k, v), grad_out, rep_ms))
        add("A-shape (128, 4096)", "random",
            _timings(lambda q, k, v: mf.streaming_forward(q, k, v, 128, 4096), (q, k, v), grad_out, rep_ms))
    return rows


def print_table(rows):
    cols = ["S", "pattern", "mode", "ms", "x_cudnn", "goal", "fwd_ms", "bwd_ms", "computed_fraction",
            "bwd_tile_tflops", "cudnn_bwd_tflops", "tflops_bwd"]
    print(" | ".join(cols))
    for r in rows:
        cells = []
        for c in cols:
            val = r.get(c, "")
            cells.append(f"{val:.3f}" if isinstance(val, float) else str(val))
        print(" | ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[131072])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=["random", "structured"])
    parser.add_argument("--rep-ms", type=float, default=1000)
    parser.add_argument("--vs-budgets", nargs="*", default=[f"{a},{b}" for a, b in VS_BUDGETS],
                        help="vertical-slash budgets as NV,NS (none: skip vertical-slash)")
    parser.add_argument("--no-flex", action="store_true", help="skip block-sparse and A-shape")
    parser.add_argument("--out", default="perf/results/train.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_train needs a CUDA GPU")
    info = machine()
    print(info)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    budgets = [tuple(int(x) for x in b.split(",")) for b in args.vs_budgets]
    rows = []
    for seq_len in args.lengths:
        rows += bench_length(seq_len, args.heads, args.kv_heads, args.head_dim, args.modes, args.rep_ms,
                             budgets, not args.no_flex)
        torch.cuda.empty_cache()
        print_table([r for r in rows if r["S"] == seq_len])
        write_json(args.out, {"machine": info, "args": vars(args), "rows": rows})  # after each length
    print_table(rows)


if __name__ == "__main__":
    main()
