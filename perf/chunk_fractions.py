"""Work a chunked vertical-slash pre-fill must do: the fraction of dense causal key tiles that
the kernel computes for structured-mode indices (perf/planted.py) with each head's budgets of a
pattern config, per chunk and over the whole pre-fill (chunks weighted by their dense tiles).

This bounds what any kernel can gain on that config: at fraction f of the tiles, attention
costs about f of dense attention at best. Runs on the CPU (index build only, no attention).

Usage: python perf/chunk_fractions.py --shape qwen2.5-7b-1m --layers 2 --length 1048576 --chunk 32768 \
           --out perf/results/chunk_fractions.json
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from custom_ops.vertical_slash import build_vertical_slash_index  # noqa: E402
from minference_flex.ops.attention import DENSE_FALLBACK_FRACTION  # noqa: E402
from custom_ops.vertical_slash.index import dense_tiles, head_fractions  # noqa: E402
from minference_flex.patterns.config import VERTICAL_SLASH, load_pattern_config, shipped_config_path  # noqa: E402
from perf.bench_e2e import SHAPES, layer_subset  # noqa: E402
from perf.common import write_json  # noqa: E402
from perf.planted import planted_per_head  # noqa: E402

BLOCK = 64


def chunk_fraction(verticals: list[int], slashes: list[int], seq_len: int, q_len: int) -> tuple[float, int]:
    """(computed fraction averaged over the heads, as the op's dense fallback reads it; dense
    causal tiles of the chunk) for the last q_len queries of seq_len keys."""
    v_idx, s_idx = planted_per_head(1, seq_len, verticals, slashes, "cpu")
    index = build_vertical_slash_index(v_idx, s_idx, seq_len, BLOCK, q_len)
    fraction = head_fractions(index, BLOCK, seq_len - q_len).mean().item()
    return fraction, dense_tiles(-(-q_len // BLOCK), seq_len - q_len, BLOCK)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-7b-1m")
    parser.add_argument("--layers", type=int, default=2, help="layers of the config, spread over its depth")
    parser.add_argument("--length", type=int, default=1 << 20)
    parser.add_argument("--chunk", type=int, default=32768)
    parser.add_argument("--out", default="perf/results/chunk_fractions.json")
    args = parser.parse_args(argv)
    build, name = SHAPES[args.shape]
    path = shipped_config_path(name)
    subset = layer_subset(path, args.layers)
    heads = len(subset[0])
    patterns = load_pattern_config(subset, len(subset), heads)
    rows, total = [], {"tiles": 0.0, "dense": 0}
    for layer, layer_patterns in enumerate(patterns):
        verticals = [p.a if p.kind == VERTICAL_SLASH else 0 for p in layer_patterns]
        slashes = [p.b if p.kind == VERTICAL_SLASH else 0 for p in layer_patterns]
        tiles = dense = 0.0
        for start in range(0, args.length, args.chunk):
            end = min(args.length, start + args.chunk)
            fraction, chunk_dense = chunk_fraction(verticals, slashes, end, end - start)
            # past DENSE_FALLBACK_FRACTION the op runs dense attention: all of the chunk's tiles
            tiles += (1.0 if fraction > DENSE_FALLBACK_FRACTION else fraction) * chunk_dense
            dense += chunk_dense
            rows.append({"layer": layer, "chunk_end": end, "fraction": fraction})
            print(f"layer {layer} chunk ending {end}: {fraction:.3f}", flush=True)
        print(f"layer {layer}: {tiles / dense:.3f} of the dense causal tiles", flush=True)
        total["tiles"] += tiles
        total["dense"] += dense
    overall = total["tiles"] / total["dense"]
    print(f"whole pre-fill ({args.layers} layers, {args.length} tokens, chunks of {args.chunk}): {overall:.3f}")
    write_json(args.out, {"args": vars(args), "config": path, "rows": rows, "fraction": overall})


if __name__ == "__main__":
    main()
