"""Accuracy of sparse pre-fill on the retrieval model trained here, against dense.

Per task (minference_flex.tasks) and length: exact-match accuracy over held-out samples for
- dense: the model's own SDPA attention;
- minference_flex default: `compile(model)` with no config (DEFAULT_PATTERN on every head);
- minference_flex searched: the config searched for the model (shipped next to it, or --searched);
- A-shape: every head `stream_llm` with 4 sink tokens and a local window of length / 8
  (StreamingLLM-like).
Sparse pre-fill is forced on (min_sparse_len below the prompt); decoding stays dense. Also the
attention recall of each sparse method per layer (share of dense attention mass inside its
mask, `minference_flex.attention_recall`), on the first sample of each task and length.

Usage: python perf/bench_accuracy.py [--lengths 4096 8192 16384] [--samples 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from minference_flex.config import A_SHAPE, HeadPattern, load_pattern_config  # noqa: E402
from minference_flex.probe import dense_forward_with_probe  # noqa: E402
from minference_flex.retrieval_model import answer, load_retrieval_model, searched_config_path  # noqa: E402
from minference_flex.tasks import TASKS, exact_match, make_sample  # noqa: E402
from perf.common import machine, write_json  # noqa: E402

def method_configs(model, length: int, searched: str | None) -> dict[str, list | None]:
    """Per method: the per-layer HeadPattern lists (None = dense)."""
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    out: dict[str, list | None] = {"dense": None}
    with warnings.catch_warnings():  # the "no shipped config" warning: expected here
        warnings.simplefilter("ignore")
        out["minference_flex default"] = load_pattern_config(None, layers, heads, model.config._name_or_path)
    if searched:
        out["minference_flex searched"] = load_pattern_config(searched, layers, heads)
    out["A-shape (4, L/8)"] = [[HeadPattern(A_SHAPE, 4, max(1, length // 8))] * heads for _ in range(layers)]
    return out


def layer_recall(model, ids: torch.Tensor, configs: dict[str, list]) -> dict[str, list[float]]:
    """Mean attention recall over heads, per layer, of each config, from one dense forward."""
    recall: dict[str, list[float]] = {name: [] for name in configs}

    def on_layer(layer, q, k, scale):
        for name, config in configs.items():
            recall[name].append(mf.attention_recall(q, k, config[layer], scale).mean().item())

    dense_forward_with_probe(model, ids, on_layer)
    return recall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the shipped retrieval model)")
    parser.add_argument("--searched", default=None, help="searched pattern config (default: the one next to the model)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--samples", type=int, default=50, help="held-out samples per task and length")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="perf/results/accuracy.json")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_retrieval_model(args.model, device)
    searched = args.searched or searched_config_path(args.model)
    info = machine()
    print(info, "searched config:", searched, flush=True)
    rows, recalls = [], []
    for length in args.lengths:
        configs = method_configs(model, length, searched)
        for task in args.tasks:
            samples = [make_sample(task, length, 10**9 + i) for i in range(args.samples)]
            ids = torch.tensor([samples[0].prompt], device=device)
            recall = layer_recall(model, ids, {n: c for n, c in configs.items() if c is not None})
            recalls.append({"S": length, "task": task, "per_layer": recall})
            for name, config in configs.items():
                if config is not None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        mf.compile(model, config, min_sparse_len=min(1024, length))
                try:
                    hits = [exact_match(answer(model, s), s.answer) for s in samples]
                finally:
                    if config is not None:
                        mf.restore(model)
                row = {"S": length, "task": task, "method": name, "accuracy": 100.0 * sum(hits) / len(hits),
                       "samples": len(hits)}
                if name in recall:
                    row["mean_recall"] = sum(recall[name]) / len(recall[name])
                rows.append(row)
                print(f"S={length} {task:9s} {name:26s} acc {row['accuracy']:5.1f}%"
                      + (f"  recall {row['mean_recall']:.3f}" if "mean_recall" in row else ""), flush=True)
                write_json(args.out, {"machine": info, "args": vars(args), "rows": rows, "recall": recalls})
    print("\nS | task | method | accuracy % | mean recall")
    for r in rows:
        print(f"{r['S']} | {r['task']} | {r['method']} | {r['accuracy']:.1f} | {r.get('mean_recall', float('nan')):.3f}")


if __name__ == "__main__":
    main()
