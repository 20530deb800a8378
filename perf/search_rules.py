"""Compare selection rules on a search's tables, with no model run.

    python perf/search_rules.py TABLES.json [--tolerances 0.01 0.02 0.05 0.1] [--floors 0.9 0.95]
        [--write-dir DIR]

TABLES.json: `python -m minference_flex search ... --tables TABLES.json`. For each rule, the
config it picks from the same per-head recall and cost tables, with its mean predicted cost (the
fraction of dense causal 64 x 64 tiles, each head's own view) and mean recall:
- `tolerance T` (the search's rule): per head the cheapest candidate within T of its best recall;
- `floor R`: per head the cheapest candidate keeping recall >= R (the best one where none does).
--write-dir writes each rule's config (MInference's format) for `eval --config NAME=PATH`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minference_flex.patterns.config import HeadPattern, save_pattern_config  # noqa: E402
from minference_flex.pattern_search.search import select_patterns  # noqa: E402


def select_by_floor(recall: torch.Tensor, cost: torch.Tensor, floor: float) -> list[int]:
    """Per head, the cheapest candidate with recall >= floor, else the highest-recall one."""
    chosen = []
    for row, head_cost in zip(recall.tolist(), cost.tolist()):
        ok = [c for c, r in enumerate(row) if r >= floor]
        chosen.append(min(ok, key=lambda c: (head_cost[c], -row[c], c)) if ok else max(range(len(row)), key=row.__getitem__))
    return chosen


def apply(tables: dict, rule) -> tuple[list[list[HeadPattern]], float, float]:
    """(config, mean cost, mean recall) of `rule(recall [H, C], cost [H, C])` over every layer."""
    candidates = [HeadPattern(*c) for c in tables["candidates"]]
    config, costs, recalls = [], [], []
    for rec, cost in zip(tables["candidate_recall"], tables["candidate_cost"]):
        rec, cost = torch.tensor(rec), torch.tensor(cost, dtype=torch.float64)
        chosen = rule(rec, cost)
        config.append([candidates[c] for c in chosen])
        costs += [float(cost[h, c]) for h, c in enumerate(chosen)]
        recalls += [float(rec[h, c]) for h, c in enumerate(chosen)]
    return config, sum(costs) / len(costs), sum(recalls) / len(recalls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables")
    parser.add_argument("--tolerances", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--floors", type=float, nargs="*", default=[0.9, 0.95, 0.98])
    parser.add_argument("--write-dir", default=None)
    args = parser.parse_args(argv)
    with open(args.tables) as f:
        tables = json.load(f)
    rules = {f"tolerance {t}": (lambda r, c, t=t: select_patterns(r, c, t)) for t in args.tolerances}
    rules.update({f"floor {x}": (lambda r, c, x=x: select_by_floor(r, c, x)) for x in args.floors})
    print(f"{tables['seq_len']} calibration tokens; rule | mean predicted tile fraction | mean recall")
    for name, rule in rules.items():
        config, cost, recall = apply(tables, rule)
        print(f"{name:16s} | {cost:.4f} | {recall:.4f}")
        if args.write_dir:
            save_pattern_config(config, os.path.join(args.write_dir, name.replace(" ", "_") + ".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
