"""Accuracy of sparse pre-fill against dense on the retrieval model, on one process or many.

The table: per length, task (`minference_flex.tasks`) and method, the exact-match accuracy over
held-out samples (seeds 10**9 + i), and per sparse method the mean attention recall of each
layer on the first sample of each task and length (`minference_flex.attention_recall`). Methods
(`METHODS`):
- dense: the model's own SDPA attention;
- default: `compile(model)` with no config (DEFAULT_PATTERN on every head);
- searched: the config searched for the model (shipped next to it, or `searched`);
- a-shape: every head `stream_llm` with 4 sink tokens and a local window of length / 8.
Sparse pre-fill is forced on (min_sparse_len below the prompt); decoding stays dense.

Data parallel: every sample is one work item, and items are dealt out by rank (item i to
process i mod N), so each process loads the model on its own device and answers its share;
`accelerate.utils.gather_object` collects the per-sample results on every process after each
length, and the main process builds and writes the table. A sample's answer depends only on
the sample, so the table equals the one-process table:

  accelerate launch --num_processes N -m minference_flex eval --out table.json   # N GPUs
  python -m minference_flex eval --out table.json                                # one process

On CPU, `accelerate launch --cpu` starts one process (it starts several only through MPI);
`accelerate launch --multi_gpu --num_processes N ... --device cpu` (the torchrun launcher)
starts N, which join over gloo.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .config import A_SHAPE, HeadPattern, load_pattern_config
from .hf import compile as compile_model, restore
from .probe import dense_forward_with_probe
from .recall import attention_recall
from .retrieval_model import answer, load_retrieval_model, searched_config_path
from .tasks import TASKS, exact_match, make_sample

#: Method key (command line) -> its name in the table.
METHODS = {
    "dense": "dense",
    "default": "minference_flex default",
    "searched": "minference_flex searched",
    "a-shape": "A-shape (4, L/8)",
}

#: First seed of the held-out samples (training draws seeds below it).
HELD_OUT_SEED = 10**9


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """What the table covers. lengths: prompt tokens; tasks: of `tasks.TASKS`; samples: per
    task and length; methods: keys of `METHODS` (searched is dropped when the model has no
    searched config); recall: measure the per-layer recall of the sparse methods."""

    lengths: tuple[int, ...] = (4096, 8192, 16384)
    tasks: tuple[str, ...] = TASKS
    samples: int = 50
    methods: tuple[str, ...] = tuple(METHODS)
    recall: bool = True

    def __post_init__(self) -> None:
        if not self.lengths or not all(isinstance(n, int) and n >= 64 for n in self.lengths):
            raise ValueError(f"lengths must be ints >= 64 tokens, got {self.lengths!r}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be some of {', '.join(TASKS)}, got {self.tasks!r}")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {self.samples!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"methods must be some of {', '.join(METHODS)}, got {self.methods!r}")


def method_configs(
    model: Any, length: int, searched: str | None, methods: Sequence[str] = tuple(METHODS)
) -> dict[str, list | None]:
    """Per method name (`METHODS` values, in `methods` order): the per-layer HeadPattern
    lists, None for dense. searched is left out when `searched` is None."""
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    out: dict[str, list | None] = {}
    for key in methods:
        if key == "dense":
            out[METHODS[key]] = None
        elif key == "default":
            with warnings.catch_warnings():  # the "no shipped config" warning: expected here
                warnings.simplefilter("ignore")
                out[METHODS[key]] = load_pattern_config(None, layers, heads, model.config._name_or_path)
        elif key == "searched" and searched:
            out[METHODS[key]] = load_pattern_config(searched, layers, heads)
        elif key == "a-shape":
            out[METHODS[key]] = [[HeadPattern(A_SHAPE, 4, max(1, length // 8))] * heads for _ in range(layers)]
    return out


def layer_recall(model: Any, ids: torch.Tensor, configs: dict[str, list]) -> dict[str, list[float]]:
    """Mean attention recall over heads, per layer, of each config, from one dense forward
    of ids [1, S]."""
    recall: dict[str, list[float]] = {name: [] for name in configs}

    def on_layer(layer: int, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        for name, config in configs.items():
            recall[name].append(attention_recall(q, k, config[layer], scale).mean().item())

    dense_forward_with_probe(model, ids, on_layer)
    return recall


def work_items(spec: EvalSpec, length: int) -> list[tuple[str, int]]:
    """The (task, sample index) items of one length, in table order."""
    return [(task, i) for task in spec.tasks for i in range(spec.samples)]


def run_items(
    model: Any, length: int, items: Sequence[tuple[str, int]], configs: dict[str, list | None], recall: bool
) -> list[dict]:
    """Answer each (task, sample index) item of `length` with every method of `configs`.

    Returns one record per item: {"S", "task", "sample", "hits": {method: bool}, "recall":
    per-layer recall of each sparse method (sample 0 with `recall` only) or None}. Each
    record depends only on its item, not on which other items this process runs.
    """
    samples = [make_sample(task, length, HELD_OUT_SEED + i) for task, i in items]
    records = [{"S": length, "task": task, "sample": i, "hits": {}, "recall": None} for task, i in items]
    device = next(model.parameters()).device
    sparse = {name: config for name, config in configs.items() if config is not None}
    for record, sample in zip(records, samples):
        if recall and record["sample"] == 0 and sparse:
            ids = torch.tensor([sample.prompt], device=device)
            record["recall"] = layer_recall(model, ids, sparse)
    for name, config in configs.items():
        if config is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile_model(model, config, min_sparse_len=min(1024, length))
        try:
            for record, sample in zip(records, samples):
                record["hits"][name] = exact_match(answer(model, sample), sample.answer)
        finally:
            if config is not None:
                restore(model)
    return records


def build_table(records: Sequence[dict], spec: EvalSpec, methods: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(rows, recall) of the table from the per-item records of every process, in table order
    (length, task, method) whatever order the records come in.

    rows: {"S", "task", "method", "accuracy" (%), "samples", "mean_recall" (sparse methods,
    when measured)}; recall: {"S", "task", "per_layer": {method: [per-layer recall]}}.
    """
    by_key = {(r["S"], r["task"], r["sample"]): r for r in records}
    rows, recalls = [], []
    for length in spec.lengths:
        for task in spec.tasks:
            group = [by_key[(length, task, i)] for i in range(spec.samples) if (length, task, i) in by_key]
            if not group:
                continue
            recall = next((r["recall"] for r in group if r["recall"] is not None), None)
            if recall is not None:
                recalls.append({"S": length, "task": task, "per_layer": recall})
            for name in methods:
                hits = [r["hits"][name] for r in group]
                row = {"S": length, "task": task, "method": name, "accuracy": 100.0 * sum(hits) / len(hits),
                       "samples": len(hits)}
                if recall is not None and name in recall:
                    row["mean_recall"] = sum(recall[name]) / len(recall[name])
                rows.append(row)
    return rows, recalls


def format_row(row: dict) -> str:
    """One table row as printed: `S task method accuracy [recall]`."""
    text = f"S={row['S']} {row['task']:9s} {row['method']:26s} acc {row['accuracy']:5.1f}%"
    return text + (f"  recall {row['mean_recall']:.3f}" if "mean_recall" in row else "")


def evaluate(
    model: Any,
    spec: EvalSpec,
    searched: str | None = None,
    on_table: Callable[[list[dict], list[dict]], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """The accuracy table of `model` (a retrieval model, see `retrieval_model`), split across
    the processes of the running accelerate launch (one process without one).

    Each process runs the items of each length with index = its rank mod the process count;
    the records are gathered on every process after each length, and `on_table(rows,
    recall)` is called on the main process with the table so far. Returns (rows, recall)
    on every process (see `build_table`).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    records: list[dict] = []
    methods: list[str] = []
    for length in spec.lengths:
        configs = method_configs(model, length, searched, spec.methods)
        methods = list(configs)
        items = work_items(spec, length)[state.process_index :: state.num_processes]
        mine = run_items(model, length, items, configs, spec.recall)
        records += gather_object(mine) if state.num_processes > 1 else mine
        rows, recalls = build_table(records, spec, methods)
        if state.is_main_process and on_table is not None:
            on_table(rows, recalls)
    return build_table(records, spec, methods)


def add_arguments(parser: Any) -> None:
    """The eval options (shared by `python -m minference_flex eval` and perf/bench_accuracy.py)."""
    parser.add_argument("--model", default=None, help="model directory (default: the shipped retrieval model)")
    parser.add_argument("--searched", default=None,
                        help="searched pattern config (default: the one saved next to the model)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--samples", type=int, default=50, help="held-out samples per task and length")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="methods to run (default: all; searched only where the model has a searched config)")
    parser.add_argument("--no-recall", action="store_true", help="skip the per-layer attention recall")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: each process's accelerate device (its GPU; the CPU where there is none)")
    parser.add_argument("--out", default="perf/results/accuracy.json",
                        help="where the main process writes the table (JSON)")


def run(parser: Any, args: Any) -> dict:
    """Run the eval command: check the arguments, evaluate, write `args.out` on the main
    process; returns the written payload (on every process)."""
    from accelerate import PartialState

    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    if any(n < 64 for n in args.lengths):
        parser.error(f"--lengths must be >= 64 tokens, got {args.lengths}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu")
    if args.searched is not None and not os.path.isfile(args.searched):
        parser.error(f"--searched {args.searched}: no such file; pass a pattern config (.json)")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(out_dir):
        parser.error(f"--out {args.out}: cannot write a file there; pass a file path in an existing directory")
    # without a GPU the processes of a torchrun-style launch (`accelerate launch --multi_gpu`,
    # torchrun) join over gloo only when accelerate is told to use the CPU
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    spec = EvalSpec(tuple(args.lengths), tuple(args.tasks), args.samples, tuple(args.methods), not args.no_recall)
    model = load_retrieval_model(args.model, state.device)
    searched = args.searched or searched_config_path(args.model)
    info = _machine()
    payload: dict = {"machine": info, "args": vars(args), "processes": state.num_processes, "searched": searched}
    if state.is_main_process:
        print(info, f"processes: {state.num_processes}", "searched config:", searched, flush=True)
    printed = 0

    def write(rows: list[dict], recalls: list[dict]) -> None:
        nonlocal printed
        for row in rows[printed:]:
            print(format_row(row), flush=True)
        printed = len(rows)
        payload.update(rows=rows, recall=recalls)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)

    rows, recalls = evaluate(model, spec, searched, write)
    payload.update(rows=rows, recall=recalls)
    if state.is_main_process:
        print(f"wrote {args.out}\n\nS | task | method | accuracy % | mean recall")
        for r in rows:
            recall = r.get("mean_recall", float("nan"))
            print(f"{r['S']} | {r['task']} | {r['method']} | {r['accuracy']:.1f} | {recall:.3f}")
    return payload


def _machine() -> dict:
    import datetime
    import platform

    import transformers
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"date": datetime.date.today().isoformat(), "gpu": gpu, "torch": torch.__version__,
            "triton": triton.__version__, "transformers": transformers.__version__}
