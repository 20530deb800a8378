"""A dense and a sparse fine-tune of the same model, side by side, from their train_log.json.

    python perf/compare_finetune.py DENSE_DIR SPARSE_DIR [--window 50] [--out perf/results/finetune.json]

DENSE_DIR and SPARSE_DIR are the `--out` folders of two `python -m minference_flex.retrieval.train` runs
with the same `--init` model and schedule, the second with `--sparse-attention`
(`python -m perf finetune` runs both, then this). Printed and written as JSON:
- loss: the mean logged training loss over windows of `--window` steps, the same steps in both
  runs (the logs hold every 10th step's loss);
- step time: the median over the logged windows of milliseconds per step, per prompt length;
- accuracy: each run's final held-out evaluation per length and task (the same held-out
  samples for both: their seeds depend only on task, length and index);
- minutes of training in all.
The JSON also keeps both loss series; `python perf/plot.py --only finetune` draws them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

RUNS = ("dense", "sparse")


def read_log(folder: str) -> dict:
    """The train_log.json of a `minference_flex.retrieval.train --out` folder."""
    path = os.path.join(folder, "train_log.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder}: no train_log.json; pass the --out folder of a minference_flex.retrieval.train run")
    with open(path) as f:
        log = json.load(f)
    missing = [key for key in ("preset", "steps", "init", "sparse_attention") if key not in log]
    if missing:
        raise ValueError(f"{path}: not a training log (missing {missing})")
    return log


def _check_pair(dense: dict, sparse: dict) -> None:
    if dense["sparse_attention"] is not None:
        raise ValueError("the first run trained with --sparse-attention; pass the dense run first, then the sparse one")
    if sparse["sparse_attention"] is None:
        raise ValueError("the second run trained dense; pass the run made with --sparse-attention second")
    if dense["init"] != sparse["init"]:
        raise ValueError(f"the runs start from different models ({dense['init']} and {sparse['init']}); "
                         "fine-tune the same --init model in both")
    keys = ("stages", "tasks", "lr", "lm_weight", "replay")
    differ = [k for k in keys if dense["preset"].get(k) != sparse["preset"].get(k)]
    if differ:
        raise ValueError(f"the runs' schedules differ in {differ}; run both with the same options")


def loss_windows(dense: dict, sparse: dict, window: int) -> list[dict]:
    """[{"first_step", "last_step", "dense", "sparse"}]: mean logged loss of each run over the
    steps first_step..last_step, for every window both logs cover."""
    losses = {name: {e["step"]: e["loss"] for e in log["steps"]} for name, log in zip(RUNS, (dense, sparse))}
    common = sorted(set(losses["dense"]) & set(losses["sparse"]))
    windows: dict[int, list[int]] = {}
    for step in common:
        windows.setdefault((step - 1) // window, []).append(step)
    return [{"first_step": w * window + 1, "last_step": (w + 1) * window,
             **{name: statistics.fmean(losses[name][s] for s in steps) for name in RUNS}}
            for w, steps in sorted(windows.items())]


def step_ms(log: dict) -> dict[int, float]:
    """Median logged milliseconds per step at each prompt length."""
    by_length: dict[int, list[float]] = {}
    for entry in log["steps"]:
        if "step_ms" in entry:
            by_length.setdefault(int(entry["length"]), []).append(entry["step_ms"])
    return {length: statistics.median(values) for length, values in sorted(by_length.items())}


def compare(dense: dict, sparse: dict, window: int = 50) -> dict[str, Any]:
    """The side-by-side table of two fine-tunes (module docstring) as a dict."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 10:
        raise ValueError(f"window must be an int >= 10 steps (the logs hold every 10th step), got {window!r}")
    _check_pair(dense, sparse)
    logs = dict(zip(RUNS, (dense, sparse)))
    times = {name: step_ms(log) for name, log in logs.items()}
    finals = {name: log.get("final") or {} for name, log in logs.items()}
    return {
        "init": dense["init"],
        "schedule": {k: dense["preset"][k] for k in ("stages", "tasks", "lr")},
        "sparse_attention": sparse["sparse_attention"],
        "steps": {name: log.get("steps_done") for name, log in logs.items()},
        "train_minutes": {name: log.get("train_minutes") for name, log in logs.items()},
        "loss": loss_windows(dense, sparse, window),
        "step_ms": {str(length): {name: times[name].get(length) for name in RUNS}
                    for length in sorted(set(times["dense"]) | set(times["sparse"]))},
        "final_accuracy": {length: {name: finals[name].get(length) for name in RUNS}
                           for length in sorted(set(finals["dense"]) | set(finals["sparse"]), key=int)},
        "loss_series": {name: [[e["step"], e["loss"]] for e in log["steps"]] for name, log in logs.items()},
        "devices": {name: log.get("device") for name, log in logs.items()},
    }


def format_table(table: dict) -> str:
    """The comparison as markdown tables."""
    lines = [f"fine-tune of {table['init']}, stages {table['schedule']['stages']}, sparse: "
             f"{table['sparse_attention']}", "", "| steps | dense loss | sparse loss |", "|---|---|---|"]
    lines += [f"| {w['first_step']}-{w['last_step']} | {w['dense']:.4f} | {w['sparse']:.4f} |" for w in table["loss"]]
    lines += ["", "| length | dense ms/step | sparse ms/step | sparse / dense |", "|---|---|---|---|"]
    for length, ms in table["step_ms"].items():
        ratio = ms["sparse"] / ms["dense"] if ms["dense"] and ms["sparse"] else float("nan")
        lines.append(f"| {length} | {ms['dense'] or float('nan'):.1f} | {ms['sparse'] or float('nan'):.1f} | {ratio:.2f} |")
    lines += ["", "| length | task | dense accuracy | sparse accuracy |", "|---|---|---|---|"]
    for length, runs in table["final_accuracy"].items():
        tasks = sorted(set(runs["dense"] or {}) | set(runs["sparse"] or {}))
        for task in tasks:
            cells = [f"{100 * r[task]:.0f}%" if r and task in r else "-" for r in (runs["dense"], runs["sparse"])]
            lines.append(f"| {length} | {task} | {cells[0]} | {cells[1]} |")
    minutes, steps = table["train_minutes"], table["steps"]
    lines.append(f"\nsteps: dense {steps['dense']}, sparse {steps['sparse']}; minutes of training: "
                 f"dense {minutes['dense']:.2f}, sparse {minutes['sparse']:.2f}")
    if steps["dense"] != steps["sparse"]:
        lines.append("the runs stopped at different steps (a time budget ran out): compare only the steps both ran")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dense", help="--out folder of the dense fine-tune")
    parser.add_argument("sparse", help="--out folder of the --sparse-attention fine-tune")
    parser.add_argument("--window", type=int, default=50, help="steps per loss window (>= 10)")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        table = compare(read_log(args.dense), read_log(args.sparse), args.window)
    except ValueError as exc:
        parser.error(str(exc))
    print(format_table(table))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)
        print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
