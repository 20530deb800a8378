"""A/B timing of the vertical-slash kernel against a saved earlier version, in one run (GPU).

    mkdir -p /tmp/base/base_vs && touch /tmp/base/base_vs/__init__.py
    for f in index kernel; do git show REV:custom_ops/vertical_slash/$f.py > /tmp/base/base_vs/$f.py; done
    python perf/ab_vertical_slash.py --baseline /tmp/base --out ab.json

Both versions get the same estimated indices; times alternate between them (A, B, A, B) so
that clock drift hits both, and each figure is the median of the rounds. The outputs must
agree (max_abs_diff, bf16). Dense cuDNN SDPA is timed in the same run for the ratio.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction  # noqa: E402
from custom_ops.vertical_slash.kernel import launch_vertical_slash  # noqa: E402
from perf.common import machine, median_ms, sdpa_dense, write_json  # noqa: E402
from perf.planted import planted_vertical_slash  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="folder holding the package base_vs (index.py, kernel.py)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[131072, 262144])
    parser.add_argument("--budgets", nargs="+", default=["3500,100", "30,800", "1000,6096"])
    parser.add_argument("--max-work", type=float, default=0.5, help="skip cases above this fraction at 256K+")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rep-ms", type=float, default=500)
    parser.add_argument("--planted", action="store_true",
                        help="the structured mode's planted indices (perf/planted.py) instead of estimated ones")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    sys.path.insert(0, args.baseline)
    base_index = importlib.import_module("base_vs.index")
    base_kernel = importlib.import_module("base_vs.kernel")
    from torch.nn.attention import SDPBackend

    print(machine())
    rows = []
    for s in args.lengths:
        torch.manual_seed(0)
        q = torch.randn(1, 32, s, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 8, s, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        scale = 128**-0.5
        k_rep, v_rep = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
        dense = median_ms(sdpa_dense(q, k_rep, v_rep, SDPBackend.CUDNN_ATTENTION), rep_ms=args.rep_ms)
        del k_rep, v_rep
        print(f"S={s} dense cuDNN {dense:.2f} ms", flush=True)
        rows.append({"S": s, "case": "dense cuDNN", "ms": dense})
        for budget in args.budgets:
            nv, ns = (int(x) for x in budget.split(","))
            if args.planted:
                v_idx, s_idx = planted_vertical_slash(1, 32, s, nv, ns, "cuda")
            else:
                v_idx, s_idx = mf.estimate_vertical_slash(q, k, nv, ns)
            old = base_index.build_vertical_slash_index(v_idx, s_idx, s, 64)
            new = build_vertical_slash_index(v_idx, s_idx, s, 64)
            f_old = base_index.computed_fraction(old, 64).item()
            f_new = computed_fraction(new, 64).item()
            if s > 131072 and f_old > args.max_work:
                continue
            variants = {"base": lambda: base_kernel.launch_vertical_slash(q, k, v, old, 64, scale)}
            for st in args.stages:
                variants[f"new stages={st}"] = lambda st=st: launch_vertical_slash(q, k, v, new, 64, scale, 4, st)
            ref = variants["base"]()
            diffs = {name: (fn().float() - ref.float()).abs().max().item() for name, fn in variants.items()}
            times = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    times[name].append(median_ms(fn, rep_ms=args.rep_ms))
            idx_old = median_ms(lambda: base_index.build_vertical_slash_index(v_idx, s_idx, s, 64), rep_ms=args.rep_ms)
            idx_new = median_ms(lambda: build_vertical_slash_index(v_idx, s_idx, s, 64), rep_ms=args.rep_ms)
            for name in variants:
                ms = statistics.median(times[name])
                frac = f_old if name == "base" else f_new
                row = {"S": s, "case": f"({nv},{ns})" + (" planted" if args.planted else ""), "variant": name, "ms": ms, "x_cudnn": ms / dense,
                       "fraction": frac, "tile_tflops": frac * 4 * 32 * 128 * s * (s + 64) / 2 / ms / 1e9,
                       "max_abs_diff": diffs[name], "rounds_ms": times[name],
                       "index_ms": idx_old if name == "base" else idx_new}
                rows.append(row)
                print(f"S={s} ({nv},{ns}) {name:16s} {ms:9.3f} ms x{ms / dense:.4f} f={frac:.4f} "
                      f"tile {row['tile_tflops']:.0f} TF/s diff={diffs[name]:.3g} index {row['index_ms']:.2f} ms "
                      f"rounds={[round(t, 2) for t in times[name]]}", flush=True)
    if args.out:
        write_json(args.out, {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
