"""Where the retrieval model's heads look: the shapes MInference describes, measured.

For held-out samples, the attention of the last 64 queries (the question and answer cue) of
every head is split into: sink (keys 0..3), local (i - j < 128), needle (the asked fact's answer
tokens in the context: the retrieval columns) and rest. Each head is labelled by its largest
share. Prints a table per layer and writes JSON.

Usage: python perf/inspect_attention.py [--model DIR] [--task passkey] [--length 4096] [--samples 4]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minference_flex.ops.estimate import grouped_last_probs  # noqa: E402
from minference_flex.patch.probe import dense_forward_with_probe  # noqa: E402
from minference_flex.retrieval.model import load_retrieval_model  # noqa: E402
from minference_flex.retrieval.tasks import TASKS, make_sample  # noqa: E402
from perf.common import machine, write_json  # noqa: E402

LAST_Q, SINKS, LOCAL = 64, 4, 128
PARTS = ("sink", "local", "needle", "rest")
#: extra columns: the last query's share on the needle (the query that answers), and the mass
#: of the top 1% keys (how column-like the head is)
EXTRA = ("needle@last", "top1%")


def attention_shares(q: torch.Tensor, k: torch.Tensor, scale: float, needle: torch.Tensor) -> torch.Tensor:
    """[H, 6]: mean attention mass of the last LAST_Q queries on sink / local / needle / rest keys,
    then the last query's mass on the needle and the mean mass of each row's top 1% keys.

    q [1, H, S, D], k [1, Hkv, S, D]; needle: bool [S] marking the asked fact's tokens."""
    seq_len = q.shape[2]
    rows = torch.arange(seq_len - LAST_Q, seq_len, device=q.device)
    keys = torch.arange(seq_len, device=q.device)
    probs = grouped_last_probs(q, k, LAST_Q, scale)[0]  # [H, LAST_Q, S], the estimator's softmax
    gap = rows[:, None] - keys[None, :]
    sink = keys[None, :] < SINKS
    local = (gap < LOCAL) & ~sink
    pin = needle[None, :] & ~sink & ~local
    rest = ~(sink | local | pin)
    parts = [(probs * m).sum(-1).mean(-1) for m in (sink, local, pin, rest)]
    last = (probs[:, -1] * needle[None, :]).sum(-1)
    top = probs.topk(max(1, seq_len // 100), dim=-1).values.sum(-1).mean(-1)
    return torch.stack(parts + [last, top], -1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--task", choices=TASKS, default="passkey")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="perf/results/attention_shapes.json")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_retrieval_model(args.model, device)
    layers = model.config.num_hidden_layers
    totals: dict[int, torch.Tensor] = {}
    for i in range(args.samples):
        sample = make_sample(args.task, args.length, 10**9 + i)
        needle = torch.zeros(args.length, dtype=torch.bool)
        n = len(sample.answer)
        for start in range(args.length - n + 1):  # the answer's occurrences in the context
            if sample.prompt[start : start + n] == sample.answer:
                needle[start : start + n] = True
        needle = needle.to(device)

        def on_layer(layer, q, k, scale, needle=needle):
            shares = attention_shares(q, k, scale, needle).cpu()
            totals[layer] = totals.get(layer, 0) + shares / args.samples

        dense_forward_with_probe(model, torch.tensor([sample.prompt], device=device), on_layer)
    table = []
    print(f"{args.task}, {args.length} tokens, last {LAST_Q} queries, mean of {args.samples} samples")
    print("layer head | " + " | ".join(PARTS + EXTRA) + " | largest share")
    for layer in range(layers):
        for head, shares in enumerate(totals[layer].tolist()):
            label = PARTS[max(range(4), key=lambda p: shares[p])]
            table.append({"layer": layer, "head": head, **dict(zip(PARTS + EXTRA, shares)), "shape": label})
            print(f"{layer:5d} {head:4d} | " + " | ".join(f"{s:.3f}" for s in shares) + f" | {label}")
    write_json(args.out, {"machine": machine(), "args": vars(args), "heads": table})


if __name__ == "__main__":
    main()
