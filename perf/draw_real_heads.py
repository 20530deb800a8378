"""Draw a few heads of a real LLM on real text, with the pattern its config gives them.

    python perf/draw_real_heads.py --model smollm2 --length 8192 [--config F] [--heads 3:2 12:5 ...]

One dense forward over held-out book text (`minference_flex.llms.text_tasks.heldout_ids`). Per chosen
head: its causal attention pooled into 64 x 64 tiles (each query tile's mean attention mass per
key tile, log scale), and outlined on it the tiles its pattern computes on this very input
(the estimators' real indices: columns and diagonals, A-shape's sinks and window, block-sparse's
tiles), with the head's attention recall (mass on the pattern's keys) and tile fraction. Default
heads: one per pattern kind in the config, from the middle layers. Writes a PNG and a JSON of
the per-head figures (perf/figures/real_heads_NAME.png, perf/results/real_heads_NAME.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minference_flex.ops import reference  # noqa: E402
from minference_flex.patterns.config import (  # noqa: E402
    A_SHAPE, BLOCK_SPARSE, BLOCK_SPARSE_TOPK, VERTICAL_SLASH, load_pattern_config, shipped_config_path,
)
from minference_flex.ops.estimate import estimate_vertical_slash  # noqa: E402
from minference_flex.evaluation.evaluate import pattern_name  # noqa: E402
from minference_flex.llms.pretrained import load_text_model  # noqa: E402
from minference_flex.patch.probe import dense_forward_with_probe  # noqa: E402
from minference_flex.llms.text_tasks import heldout_ids  # noqa: E402
from perf.common import machine  # noqa: E402

TILE = 64


def default_heads(config, count: int = 4) -> list[tuple[int, int]]:
    """One head per pattern kind, from the middle layers outwards, then more up to `count`."""
    layers = sorted(range(len(config)), key=lambda i: abs(i - len(config) / 2))
    chosen, kinds = [], set()
    for i in layers:
        for h, pattern in enumerate(config[i]):
            if pattern.kind not in kinds:
                kinds.add(pattern.kind)
                chosen.append((i, h))
    for i in layers:
        if len(chosen) >= count:
            break
        if (i, 0) not in chosen:
            chosen.append((i, 0))
    return sorted(chosen[:count])


def pattern_mask(pattern, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """[S, S] bool: the keys the pattern's kernel attends for one head (q [1, 1, S, D], k [1, 1, S, D])."""
    seq_len = q.shape[2]
    if pattern.kind == A_SHAPE:
        return reference.a_shape_mask(seq_len, pattern.a, pattern.b, q.device)
    if pattern.kind == BLOCK_SPARSE:
        return reference.block_sparse_mask(q.float(), k.float(), BLOCK_SPARSE_TOPK)[0, 0]
    v_idx, s_idx = estimate_vertical_slash(q, k, pattern.a, pattern.b, scale=scale)
    return reference.vertical_slash_mask(v_idx, s_idx, seq_len)[0, 0]


def tile_view(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scale: float, rows: int = 1024):
    """(mass [M, M]: per query tile, the mean attention mass on each key tile; computed [M, M]
    bool: tiles holding a key the mask attends; recall: mean mass on the mask's keys)."""
    seq_len = q.shape[2]
    m = math.ceil(seq_len / TILE)
    mass = torch.zeros(m, m, dtype=torch.float64)
    kept = 0.0
    keys = torch.arange(seq_len)
    for start in range(0, seq_len, rows):
        stop = min(start + rows, seq_len)
        scores = (q[0, 0, start:stop].double() @ k[0, 0].double().T) * scale
        scores = scores.masked_fill(keys[None, :] > torch.arange(start, stop)[:, None], float("-inf"))
        probs = scores.softmax(-1)
        kept += float((probs * mask[start:stop]).sum())
        pooled = torch.zeros(stop - start, m, dtype=torch.float64).index_add_(1, keys // TILE, probs)
        mass.index_add_(0, torch.arange(start, stop) // TILE, pooled)
    counts = torch.bincount(keys // TILE, minlength=m).double()
    mass /= counts[:, None]
    computed = torch.zeros(m, m, dtype=torch.bool)
    q_tiles, k_tiles = torch.nonzero(mask, as_tuple=True)
    computed[q_tiles // TILE, k_tiles // TILE] = True
    return mass, computed, kept / seq_len


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--config", default=None, help="default: the config shipped for the model")
    parser.add_argument("--heads", nargs="+", default=None, metavar="LAYER:HEAD")
    parser.add_argument("--seed", type=int, default=0, help="which held-out text")
    parser.add_argument("--device", default=None)
    parser.add_argument("--name", default=None, help="file name stem (default: from the model)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tasks = load_text_model(args.model, device)
    name = args.name or model.config._name_or_path.split("/")[-1].lower()
    path = args.config or shipped_config_path(model.config._name_or_path)
    if path is None:
        parser.error(f"no config ships for {model.config._name_or_path}: pass --config")
    config = load_pattern_config(path, model.config.num_hidden_layers, model.config.num_attention_heads)
    heads = [tuple(map(int, h.split(":"))) for h in args.heads] if args.heads else default_heads(config)
    ids = torch.tensor([heldout_ids(tasks.tokenizer, args.length, 10**9 + args.seed)], device=device)
    captured: dict = {}

    def on_layer(layer, q, k, scale):
        for li, h in heads:
            if li == layer:
                group = q.shape[1] // k.shape[1]
                captured[(li, h)] = (q[:, h : h + 1].float().cpu(), k[:, h // group : h // group + 1].float().cpu(), scale)

    dense_forward_with_probe(model, ids, on_layer)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.6), squeeze=False)
    rows = []
    for ax, (layer, head) in zip(axes[0], heads):
        q, k, scale = captured[(layer, head)]
        pattern = config[layer][head]
        mask = pattern_mask(pattern, q, k, scale)
        mass, computed, recall = tile_view(q, k, mask, scale)
        causal = torch.ones_like(computed).tril()
        fraction = float((computed & causal).sum() / causal.sum())
        ax.imshow(torch.log10(mass + 1e-6).numpy(), cmap="magma", vmin=-6, vmax=0, interpolation="nearest")
        ax.contour(computed.numpy().astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title(f"layer {layer}, head {head}: {pattern_name(pattern)}\nrecall {recall:.3f}, "
                     f"{fraction:.0%} of causal tiles", fontsize=9)
        ax.set_xlabel("key tile (64 tokens)")
        ax.set_ylabel("query tile")
        rows.append({"layer": layer, "head": head, "pattern": list(pattern), "recall": recall, "tile_fraction": fraction})
        print(f"layer {layer} head {head}: {pattern_name(pattern)}, recall {recall:.4f}, tiles {fraction:.3f}")
    fig.suptitle(f"{model.config._name_or_path}, {args.length} tokens of Pride and Prejudice: attention per 64x64 "
                 "tile (log10 of mean mass), the tiles its pattern computes outlined", fontsize=10)
    fig.tight_layout()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)))
    png = os.path.join(root, "figures", f"real_heads_{name}.png")
    fig.savefig(png, dpi=110)
    out = os.path.join(root, "results", f"real_heads_{name}.json")
    with open(out, "w") as f:
        json.dump({"machine": machine(), "model": model.config._name_or_path, "length": args.length, "config": path,
                   "command": "python perf/draw_real_heads.py " + " ".join(argv or sys.argv[1:]), "heads": rows}, f,
                  indent=1)
    print(f"wrote {png} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
