"""Accuracy of sparse pre-fill against dense on the retrieval model, on one process or many.

The table: per length, task (`minference_flex.retrieval.tasks`) and method, the exact-match accuracy over
held-out samples (seeds 10**9 + i); the tile fraction: of the dense causal 64 x 64 tiles, the
share the attention kernels computed while answering those samples (`tile_count`: computed
tiles summed over layers, heads, samples, pre-fill and decode calls, over the causal tiles
summed alike; 1.0 for dense); and per sparse method the mean attention recall of each layer
on the first sample of each task and length (`minference_flex.attention_recall`). Methods
(`METHODS`, command-line key -> name in the table, in table order):
- dense: the model's own SDPA attention;
- searched: the config searched for the model (shipped next to it, or `searched`);
- searched-chunked: the same config, the prompt pre-filled in chunks of `EvalSpec.chunk`
  (8192) tokens over the KV cache (generate's prefill_chunk_size);
- default: DEFAULT_PATTERN, vertical-slash (1000, 6096), on every head;
- vs-30-800: vertical-slash (30, 800) on every head;
- bs-100: block-sparse, the top BLOCK_SPARSE_TOPK (100) tiles, on every head;
- a-shape: A-shape with 128 sink tokens and a local window of 4096 on every head.
Sparse pre-fill is forced on (min_sparse_len below the prompt and the chunk, min_chunk_len at
most the chunk); decoding stays dense.

Needle in a haystack (`EvalSpec.niah_depths`): per length, depth (percent of the prompt) and
method, the accuracy (and tile fraction) over `niah_samples` needle samples whose needle sits
at that depth (`make_sample(..., depth=)`); perf/plot.py draws them as heat maps ("niah").

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
from typing import Any, NamedTuple

import torch

from minference_flex.patterns.config import (
    A_SHAPE,
    BLOCK_SPARSE,
    BLOCK_SPARSE_TOPK,
    DEFAULT_PATTERN,
    VERTICAL_SLASH,
    HeadPattern,
    PatternConfig,
    load_pattern_config,
    shipped_config_path,
)
from minference_flex.patch.hf import compile as compile_model, restore
from minference_flex.patch.layout import leave_process_group
from minference_flex.patch.probe import dense_forward_with_probe
from minference_flex.metrics.recall import attention_recall
from minference_flex.llms.pretrained import KNOWN_MODELS, is_real_model, load_text_model
from minference_flex.retrieval.model import RETRIEVAL_TASKS, load_retrieval_model, searched_config_path
from minference_flex.retrieval.tasks import TASKS
from minference_flex.evaluation.task_set import TaskSet
from minference_flex.metrics.machine import machine
from minference_flex.metrics.tile_count import count_tiles

#: Methods that run one pattern on every head (block-sparse budgets are unused: it keeps
#: the top BLOCK_SPARSE_TOPK tiles).
EVERY_HEAD = {
    "default": HeadPattern(*DEFAULT_PATTERN),
    "vs-30-800": HeadPattern(VERTICAL_SLASH, 30, 800),
    "bs-100": HeadPattern(BLOCK_SPARSE, 0, 0),
    "a-shape": HeadPattern(A_SHAPE, 128, 4096),
}


def pattern_name(pattern: HeadPattern) -> str:
    """A pattern's name in the table: "VS (a, b)", "BS (top 100)" or "A-shape (a, b)"."""
    if pattern.kind == BLOCK_SPARSE:
        return f"BS (top {BLOCK_SPARSE_TOPK})"
    return f"{'VS' if pattern.kind == VERTICAL_SLASH else 'A-shape'} ({pattern.a}, {pattern.b})"


#: Method key (command line) -> its name in the table, in table order.
METHODS = {
    "dense": "dense",
    "searched": "minference_flex searched",
    "searched-chunked": "minference_flex searched, chunked",
    **{key: pattern_name(pattern) for key, pattern in EVERY_HEAD.items()},
}

#: First seed of the held-out samples (training draws seeds below it).
HELD_OUT_SEED = 10**9
#: The task of the needle-in-a-haystack sweep.
NIAH_TASK = "needle"


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """What the table covers. lengths: prompt tokens; tasks: of `tasks.TASKS`; samples: per
    task and length; methods: keys of `METHODS` (searched and searched-chunked are dropped
    when the model has no searched config); recall: measure the per-layer recall of the
    sparse methods; chunk: pre-fill chunk of searched-chunked, in tokens; niah_depths:
    needle depths in percent of the prompt (0..100) of the needle-in-a-haystack sweep (none:
    no sweep); niah_samples: needle samples per depth, length and method."""

    lengths: tuple[int, ...] = (4096, 8192, 16384)
    tasks: tuple[str, ...] = TASKS
    samples: int = 50
    methods: tuple[str, ...] = tuple(METHODS)
    recall: bool = True
    chunk: int = 8192
    niah_depths: tuple[int, ...] = ()
    niah_samples: int = 10

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
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 64:
            raise ValueError(f"chunk must be an int >= 64 tokens, got {self.chunk!r}")
        depths = self.niah_depths
        if not all(isinstance(d, int) and 0 <= d <= 100 for d in depths) or len(set(depths)) != len(depths):
            raise ValueError(f"niah_depths must be distinct ints in 0..100 (percent), got {depths!r}")
        if not isinstance(self.niah_samples, int) or self.niah_samples < 1:
            raise ValueError(f"niah_samples must be an int >= 1, got {self.niah_samples!r}")


class Method(NamedTuple):
    """How a method answers: config, per layer and query head (None: the model's own dense
    attention); chunk: pre-fill chunk in tokens (None: the whole prompt in one call)."""

    config: PatternConfig | None
    chunk: int | None = None


def method_runs(
    model: Any, searched: str | None, methods: Sequence[str] = tuple(METHODS), chunk: int = 8192,
    configs: dict[str, str] | None = None,
) -> dict[str, Method]:
    """Per method name (`METHODS` values, in `methods` order, then the names of `configs`: more
    pattern config files to compare): how it answers. searched and searched-chunked are left
    out when `searched` is None."""
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    out: dict[str, Method] = {}
    for key in methods:
        if key == "dense":
            out[METHODS[key]] = Method(None)
        elif key in ("searched", "searched-chunked") and searched:
            config = load_pattern_config(searched, layers, heads)
            out[METHODS[key]] = Method(config, chunk if key == "searched-chunked" else None)
        elif key in EVERY_HEAD:
            out[METHODS[key]] = Method([[EVERY_HEAD[key]] * heads for _ in range(layers)])
    for name, path in (configs or {}).items():
        out[name] = Method(load_pattern_config(path, layers, heads))
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


class Item(NamedTuple):
    """One work item: a held-out sample of `task` (seed HELD_OUT_SEED + sample), with its
    needle at `depth` percent of the prompt for the needle-in-a-haystack sweep (None: as
    drawn, for the table)."""

    task: str
    sample: int
    depth: int | None = None


def work_items(spec: EvalSpec, length: int) -> list[Item]:
    """The items of one length: the table's (task by task), then the sweep's (depth by depth)."""
    table = [Item(task, i) for task in spec.tasks for i in range(spec.samples)]
    return table + [Item(NIAH_TASK, i, d) for d in spec.niah_depths for i in range(spec.niah_samples)]


def _compile_options(length: int, methods: dict[str, Method]) -> dict[str, int]:
    """compile options that send every prompt and every full chunk sparse."""
    chunk = min((m.chunk for m in methods.values() if m.chunk is not None), default=length)
    return {"min_sparse_len": min(1024, length, chunk), "min_chunk_len": min(1024, chunk)}


def run_items(
    model: Any, length: int, items: Sequence[Sequence], methods: dict[str, Method], recall: bool,
    tasks: TaskSet = RETRIEVAL_TASKS,
    exact_masks: bool = False,
) -> list[dict]:
    """Answer each item (`Item`, or a (task, sample[, depth]) tuple) of `length` with every
    method of `methods`; `tasks` makes and scores the samples (the retrieval model's by default);
    exact_masks: vertical-slash heads attend through their exact masks (`Options.exact_masks`).

    Returns one record per item: {"S", "task", "sample", "depth" (percent or None), "hits":
    {method: bool}, "tiles": {sparse method: [computed, causal] 64-tiles of its answer
    (`tile_count`)}, "recall": per-layer recall of each unchunked sparse method (table
    sample 0 with `recall` only) or None}. Each record depends only on its item, not on which
    other items this process runs.
    """
    items = [Item(*item) for item in items]
    samples = [
        tasks.sample(it.task, length, HELD_OUT_SEED + it.sample, None if it.depth is None else it.depth / 100)
        for it in items
    ]
    records = [{"S": length, "task": it.task, "sample": it.sample, "depth": it.depth, "hits": {}, "tiles": {},
                "recall": None} for it in items]
    device = next(model.parameters()).device
    # recall is a property of the config on the whole prompt: the chunked run shares it
    sparse = {name: m.config for name, m in methods.items() if m.config is not None and m.chunk is None}
    for item, record, sample in zip(items, records, samples):
        if recall and item.sample == 0 and item.depth is None and sparse:
            ids = torch.tensor([sample.prompt], device=device)
            record["recall"] = layer_recall(model, ids, sparse)
    options = {**_compile_options(length, methods), "exact_masks": exact_masks}
    for name, method in methods.items():
        if method.config is None:
            for record, sample in zip(records, samples):
                record["hits"][name] = tasks.correct(model, sample, method.chunk)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile_model(model, method.config, **options)
        try:
            for record, sample in zip(records, samples):
                with count_tiles() as tiles:
                    record["hits"][name] = tasks.correct(model, sample, method.chunk)
                record["tiles"][name] = [tiles.computed, tiles.causal]
        finally:
            restore(model)
    return records


def _accuracy_and_tiles(group: Sequence[dict], name: str) -> dict:
    """{"accuracy" (%), "samples", "tile_fraction"} of method `name` over the records of one
    cell: tile fraction = summed computed over summed causal tiles, 1.0 for dense, None where
    the records hold no tile counts."""
    hits = [r["hits"][name] for r in group]
    counts = [r["tiles"][name] for r in group if name in r.get("tiles", {})]
    if counts:
        fraction = sum(c for c, _ in counts) / max(sum(d for _, d in counts), 1)
    else:
        fraction = 1.0 if name == METHODS["dense"] else None
    return {"accuracy": 100.0 * sum(hits) / len(hits), "samples": len(hits), "tile_fraction": fraction}


def build_table(records: Sequence[dict], spec: EvalSpec, methods: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(rows, recall) of the table from the per-item records of every process, in table order
    (length, task, method) whatever order the records come in; sweep records are left out.

    rows: {"S", "task", "method", "accuracy" (%), "samples", "tile_fraction", "mean_recall"
    (sparse methods, when measured)}; recall: {"S", "task", "per_layer": {method: [per-layer
    recall]}}.
    """
    by_key = {(r["S"], r["task"], r["sample"]): r for r in records if r.get("depth") is None}
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
                row = {"S": length, "task": task, "method": name, **_accuracy_and_tiles(group, name)}
                if recall is not None and name in recall:
                    row["mean_recall"] = sum(recall[name]) / len(recall[name])
                rows.append(row)
    return rows, recalls


def build_niah(records: Sequence[dict], spec: EvalSpec, methods: Sequence[str]) -> list[dict]:
    """The needle-in-a-haystack cells from the per-item records of every process, in order
    (length, depth, method): {"S", "depth" (percent), "method", "accuracy" (%), "samples",
    "tile_fraction"}."""
    by_key = {(r["S"], r["sample"], r["depth"]): r for r in records if r.get("depth") is not None}
    cells = []
    for length in spec.lengths:
        for depth in spec.niah_depths:
            group = [by_key[(length, i, depth)] for i in range(spec.niah_samples) if (length, i, depth) in by_key]
            if group:
                cells += [{"S": length, "depth": depth, "method": name, **_accuracy_and_tiles(group, name)}
                          for name in methods]
    return cells


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_row(row: dict) -> str:
    """One table row as printed: `S task method accuracy tiles [recall]`."""
    text = (f"S={row['S']} {row['task']:9s} {row['method']:34s} acc {row['accuracy']:5.1f}%"
            f"  tiles {_fraction(row.get('tile_fraction'))}")
    return text + (f"  recall {row['mean_recall']:.3f}" if "mean_recall" in row else "")


def format_niah(cell: dict) -> str:
    """One needle-in-a-haystack cell as printed."""
    return (f"NIAH S={cell['S']} depth {cell['depth']:3d}% {cell['method']:34s} acc {cell['accuracy']:5.1f}%"
            f"  tiles {_fraction(cell.get('tile_fraction'))}")


def evaluate(
    model: Any,
    spec: EvalSpec,
    searched: str | None = None,
    on_table: Callable[[list[dict], list[dict], list[dict]], None] | None = None,
    tasks: TaskSet = RETRIEVAL_TASKS,
    configs: dict[str, str] | None = None,
    exact_masks: bool = False,
) -> tuple[list[dict], list[dict], list[dict]]:
    """The accuracy table of `model` on `tasks` (default: the retrieval model's, see
    `retrieval_model`; a real LLM's: `text_tasks.TextTaskSet`), split across the processes of
    the running accelerate launch (one process without one). configs: more methods, name ->
    pattern config file. exact_masks: see `run_items`.

    Each process runs the items of each length with index = its rank mod the process count;
    the records are gathered on every process after each length, and `on_table(rows,
    recall, niah)` is called on the main process with the table so far. Returns (rows,
    recall, niah) on every process (see `build_table`, `build_niah`).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    records: list[dict] = []
    runs = method_runs(model, searched, spec.methods, spec.chunk, configs)
    methods = list(runs)
    for length in spec.lengths:
        items = work_items(spec, length)[state.process_index :: state.num_processes]
        mine = run_items(model, length, items, runs, spec.recall, tasks, exact_masks)
        records += gather_object(mine) if state.num_processes > 1 else mine
        if state.is_main_process and on_table is not None:
            on_table(*build_table(records, spec, methods), build_niah(records, spec, methods))
    return (*build_table(records, spec, methods), build_niah(records, spec, methods))


def add_arguments(parser: Any) -> None:
    """The eval options (of `python -m minference_flex eval`)."""
    parser.add_argument("--model", default=None,
                        help="the shipped retrieval model (default) or a directory saved by train; or a real LLM: "
                        "a short name (" + ", ".join(KNOWN_MODELS) + "), a .gguf file or a folder with one, whose "
                        "tasks hide the needles in a real novel (minference_flex.llms.text_tasks)")
    parser.add_argument("--searched", default=None,
                        help="searched pattern config (default: the one saved next to the model)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--samples", type=int, default=50, help="held-out samples per task and length")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="methods to run (default: all; searched and searched-chunked only where the model "
                        "has a searched config): " + "; ".join(f"{k} = {v}" for k, v in METHODS.items()))
    parser.add_argument("--config", action="append", default=None, metavar="NAME=PATH",
                        help="one more method, repeatable: a pattern config file, named NAME in the table")
    parser.add_argument("--chunk", type=int, default=8192,
                        help="pre-fill chunk of searched-chunked, in tokens (default 8192)")
    parser.add_argument("--niah-depths", type=int, nargs="+", default=None, metavar="PERCENT",
                        help="needle-in-a-haystack sweep: needle depths in percent of the prompt, e.g. "
                        "0 10 20 ... 100 (task needle, every method and length; default: no sweep)")
    parser.add_argument("--niah-samples", type=int, default=10, help="needle samples per depth, length and method")
    parser.add_argument("--no-recall", action="store_true", help="skip the per-layer attention recall")
    parser.add_argument("--lm-positions", type=int, default=None, metavar="P",
                        help="real LLMs: also perplexity and KL(dense || method) on held-out book text of the "
                        "longest length, over its last P positions (minference_flex.evaluation.lm_quality)")
    parser.add_argument("--lm-texts", type=int, default=4, help="held-out texts for --lm-positions (default 4)")
    parser.add_argument("--exact-masks", action="store_true",
                        help="vertical-slash heads attend through their exact masks instead of the Triton kernel "
                        "(same indices and outputs up to rounding; for CPU runs, where Triton is interpreted)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: each process's accelerate device (its GPU; the CPU where there is none)")
    parser.add_argument("--out", default="perf/results/accuracy.json",
                        help="where the main process writes the table (JSON)")


def run(parser: Any, args: Any) -> dict:
    """Run the eval command: check the arguments, evaluate, write `args.out` on the main
    process; returns the written payload (on every process)."""
    from accelerate import PartialState

    try:  # EvalSpec checks the table's arguments; its messages start with the field's name
        spec = EvalSpec(tuple(args.lengths), tuple(args.tasks), args.samples, tuple(args.methods), not args.no_recall,
                        args.chunk, tuple(args.niah_depths or ()), args.niah_samples)
    except ValueError as exc:
        field, _, rest = str(exc).partition(" ")
        parser.error(f"--{field.replace('_', '-')} {rest}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu")
    real = args.model is not None and is_real_model(args.model)
    if args.model is not None and not real and not os.path.isfile(os.path.join(args.model, "config.json")):
        parser.error(f"--model {args.model}: no saved model there (config.json missing); pass a directory "
                     f"written by save_pretrained or python -m minference_flex.retrieval.train, a .gguf file, or one of "
                     f"{', '.join(KNOWN_MODELS)}")
    if args.lm_positions is not None and not real:
        parser.error("--lm-positions measures perplexity on real text: it needs a real LLM as --model "
                     f"(e.g. {', '.join(KNOWN_MODELS)})")
    if args.searched is not None and not os.path.isfile(args.searched):
        parser.error(f"--searched {args.searched}: no such file; pass a pattern config (.json)")
    configs = {}
    for spec_text in args.config or ():
        name, sep, path = spec_text.partition("=")
        if not sep or not name or not os.path.isfile(path):
            parser.error(f"--config {spec_text}: expected NAME=PATH of an existing pattern config (.json)")
        configs[name] = path
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(out_dir):
        parser.error(f"--out {args.out}: cannot write a file there; pass a file path in an existing directory")
    # without a GPU the processes of a torchrun-style launch (`accelerate launch --multi_gpu`,
    # torchrun) join over gloo only when accelerate is told to use the CPU
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    if real:
        try:
            model, tasks = load_text_model(args.model, state.device)
        except ValueError as exc:
            parser.error(f"--model {exc}")
        searched = args.searched or shipped_config_path(model.config._name_or_path)
    else:
        model, tasks = load_retrieval_model(args.model, state.device), RETRIEVAL_TASKS
        searched = args.searched or searched_config_path(args.model)
    info = machine()
    payload: dict = {"machine": info, "args": vars(args), "processes": state.num_processes, "searched": searched,
                     "model": model.config._name_or_path if real else "retrieval model"}
    if state.is_main_process:
        print(info, f"processes: {state.num_processes}", "searched config:", searched, flush=True)
    printed_rows = printed_cells = 0

    def write(rows: list[dict], recalls: list[dict], niah: list[dict]) -> None:
        nonlocal printed_rows, printed_cells
        for row in rows[printed_rows:]:
            print(format_row(row), flush=True)
        for cell in niah[printed_cells:]:
            print(format_niah(cell), flush=True)
        printed_rows, printed_cells = len(rows), len(niah)
        payload.update(rows=rows, recall=recalls, niah=niah)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)

    rows, recalls, niah = evaluate(model, spec, searched, write, tasks, configs, args.exact_masks)
    payload.update(rows=rows, recall=recalls, niah=niah)
    if args.lm_positions is not None and state.is_main_process:
        payload["lm"] = _lm_rows(model, tasks, spec, searched, args.lm_positions, args.lm_texts, configs,
                                 args.exact_masks)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)
    if state.is_main_process:
        print(f"wrote {args.out}\n\nS | task | method | accuracy % | tile fraction | mean recall")
        for r in rows:
            recall = r.get("mean_recall", float("nan"))
            print(f"{r['S']} | {r['task']} | {r['method']} | {r['accuracy']:.1f} | {_fraction(r['tile_fraction'])} "
                  f"| {recall:.3f}")
        if niah:
            print("\nNIAH: S | depth % | method | accuracy % | tile fraction")
            for c in niah:
                fraction = _fraction(c["tile_fraction"])
                print(f"{c['S']} | {c['depth']} | {c['method']} | {c['accuracy']:.1f} | {fraction}")
    leave_process_group(state)  # the work is done (not reached after a failure)
    return payload


def _lm_rows(
    model: Any, tasks: Any, spec: EvalSpec, searched: str | None, positions: int, texts: int,
    configs: dict[str, str] | None, exact_masks: bool,
) -> list[dict]:
    """Perplexity and KL(dense || method) of each method on `texts` held-out book texts of the
    longest length (`lm_quality`); printed, and returned with "S" added."""
    from minference_flex.evaluation.lm_quality import lm_quality
    from minference_flex.llms.text_tasks import heldout_ids

    length = max(spec.lengths)
    device = next(model.parameters()).device
    ids = [torch.tensor([heldout_ids(tasks.tokenizer, length, HELD_OUT_SEED + i)], device=device) for i in range(texts)]
    runs = {name: m.config for name, m in method_runs(model, searched, spec.methods, spec.chunk, configs).items()
            if m.chunk is None}
    options = {"min_sparse_len": min(1024, length), "min_chunk_len": min(1024, length), "exact_masks": exact_masks}
    rows = [{"S": length, **row} for row in lm_quality(model, ids, runs, positions, options)]
    print(f"\nheld-out text, {texts} x {length} tokens, last {positions} positions: "
          "method | perplexity | KL(dense || method) nats | tile fraction")
    for r in rows:
        print(f"{r['method']} | {r['perplexity']:.3f} | {r['kl_vs_dense']:.5f} | {_fraction(r['tile_fraction'])}")
    return rows
