"""Draw the figures of perf/RESULTS.md from the JSON committed in perf/results/ (CPU only).

    pip install -e ".[perf]"                       # matplotlib
    python perf/plot.py [--results perf/results] [--out perf/figures] [--only kernel_time e2e_prefill niah finetune]

One function per figure, registered in `FIGURES` under the PNG's name: a new figure is one more
`@figure("name")` function. Each reads only the files that exist, prints which ones it read,
and writes nothing when none of them does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FIGURES_DIR = HERE / "figures"

# Runs the kernel figure reads, in order: a later file replaces an earlier one's rows for the same
# (length, pattern, input); None takes every row, a set only the rows of those patterns. The
# f3ee629 runs timed only the two vertical-slash budgets its estimator change touches.
KERNEL_RUNS: list[tuple[str, set[str] | None]] = [
    ("kernels_2026-11-24_4a2da9c_32k_h100.json", None),
    ("kernels_2026-11-24_9370773_128k_h100.json", None),
    ("kernels_2026-11-24_9370773_256k_h100.json", None),
    ("kernels_2026-11-24_f3ee629_vs_128k_h100.json", {"vertical-slash (3500, 100)", "vertical-slash (30, 800)"}),
    ("kernels_2026-11-24_f3ee629_vs_256k_h100.json", {"vertical-slash (3500, 100)", "vertical-slash (30, 800)"}),
]
# Dense attention at 512K: one cuDNN call and the shipped row chunks, from the tuning sweep.
DENSE_512K = "tune_2026-11-24_dense_chunks_bs_split_512k_h100.json"
DENSE_512K_ROWS = {
    "round 0: one cuDNN call, K/V repeated": "dense SDPA cuDNN",
    "round 0: dense_attention (shipped)": "dense_attention (GQA, fallback path)",
}
# End-to-end runs on the H100, in order: a later file replaces an earlier one's (length, mode).
E2E_RUNS = ["e2e_2026-11-24_c2303cd_h100.json", "e2e_2026-11-24_9370773_h100.json"]

# (pattern in the JSON, label, colour); random input solid, structured input dashed
KERNEL_SERIES = [
    ("dense SDPA cuDNN", "dense, cuDNN (baseline)", "black"),
    ("dense SDPA flash", "dense, flash", "grey"),
    ("dense_attention (GQA, fallback path)", "dense, ours (cuDNN row chunks)", "tab:brown"),
    ("vertical-slash (1000, 6096)", "vertical-slash (1000, 6096)", "tab:red"),  # random: dense fallback
    ("vertical-slash (30, 800)", "vertical-slash (30, 800)", "tab:orange"),
    ("block-sparse top 100 of 64", "block-sparse top 100", "tab:green"),
    ("A-shape (128, 4096)", "A-shape (128, 4096)", "tab:purple"),
    ("vertical-slash (3500, 100)", "vertical-slash (3500, 100)", "tab:blue"),
]
# (mode in the JSON, label, colour, line style, offset of the "x sdpa" label in points)
E2E_SERIES = [
    ("sdpa", "transformers sdpa (baseline)", "black", "-", None),
    ("flex_attention", "transformers flex_attention", "grey", "-", (8, 6)),
    ("minference_flex[shipped] random", "minference_flex, shipped config, random input", "tab:red", "-", (8, -3)),
    ("minference_flex[shipped] structured", "minference_flex, shipped config, structured input", "tab:blue", "--", (8, -13)),
]

# Accuracy tables (minference_flex eval) whose "niah" sweep the heat maps draw: every file
# matching this, in name order; a later file replaces an earlier one's (method, length, depth).
NIAH_RUNS = "accuracy*.json"

# Dense and sparse fine-tunes side by side (perf/compare_finetune.py): the latest file in name order.
FINETUNE_RUNS = "finetune*.json"

FigureFn = Callable[[Path, Path], "Path | None"]
FIGURES: dict[str, FigureFn] = {}


def figure(name: str) -> Callable[[FigureFn], FigureFn]:
    """Register a figure function under its PNG's file name (without .png)."""

    def register(fn: FigureFn) -> FigureFn:
        FIGURES[name] = fn
        return fn

    return register


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "perf/plot.py needs matplotlib: pip install -e '.[perf]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read(results: Path, name: str) -> dict | None:
    path = results / name
    if not path.is_file():
        print(f"  missing, skipped: {path}")
        return None
    print(f"  read {path}")
    return json.loads(path.read_text())


def _length_axis(ax, lengths) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths))
    ax.set_xticks(ticks, [f"{s // 1024}K" for s in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sequence length (tokens)")
    ax.grid(True, which="major", alpha=0.3)


def _log_y(ax, label: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(label)


def _save(fig, out: Path, name: str, sources: list[str]) -> Path:
    fig.text(0.01, 0.01, "data: perf/results/" + ", ".join(sources), fontsize=6.5, color="dimgray",
             ha="left", va="bottom", wrap=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=130, metadata={"Software": None})
    print(f"  wrote {path}")
    return path


@figure("kernel_time")
def kernel_time(results: Path, out: Path) -> Path | None:
    """One attention layer's time against sequence length, every pattern and the dense baselines."""
    points: dict[tuple[str, str], dict[int, float]] = {}
    sources = []
    meta = {}
    for name, patterns in KERNEL_RUNS:
        data = _read(results, name)
        if data is None:
            continue
        sources.append(name)
        meta = data["machine"]
        for row in data["rows"]:
            if patterns is None or row["pattern"] in patterns:
                points.setdefault((row["pattern"], row["mode"]), {})[row["S"]] = row["ms"]
    data = _read(results, DENSE_512K)
    if data is not None:
        sources.append(DENSE_512K)
        meta = meta or data["machine"]
        for row in data["rows"]:
            if row["variant"] in DENSE_512K_ROWS:
                points.setdefault((DENSE_512K_ROWS[row["variant"]], "-"), {})[data["seq_len"]] = row["ms"]
    if not points:
        return None

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6))
    lengths = []
    for pattern, label, colour in KERNEL_SERIES:
        for mode, style, suffix in (("-", "-", ""), ("random", "-", ", random"), ("structured", "--", ", structured")):
            series = points.get((pattern, mode))
            if not series:
                continue
            xs = sorted(series)
            lengths += xs
            width = 2.4 if pattern == "dense SDPA cuDNN" else 1.6
            if pattern == "vertical-slash (1000, 6096)" and mode == "random":
                suffix += " (dense)"
            ax.plot(xs, [series[x] for x in xs], style, color=colour, marker="o", markersize=4, linewidth=width,
                    label=label + suffix)
    _length_axis(ax, lengths)
    _log_y(ax, "time per layer (ms, log scale)")
    fig.suptitle("Attention pre-fill, one layer: B=1, 32 q / 8 kv heads, head_dim 128, bf16, causal\n"
                 f"{meta.get('gpu', 'H100')}, torch {meta.get('torch', '?')}, triton {meta.get('triton', '?')}; "
                 "sparse times include estimation and index/mask building", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.66, top=0.88, bottom=0.17)
    return _save(fig, out, "kernel_time", sources)


@figure("e2e_prefill")
def e2e_prefill(results: Path, out: Path) -> Path | None:
    """Whole-model pre-fill time against length: transformers' sdpa and flex_attention, minference_flex."""
    points: dict[str, dict[int, tuple[float, float]]] = {}
    sources = []
    meta = {}
    for name in E2E_RUNS:
        data = _read(results, name)
        if data is None:
            continue
        sources.append(name)
        meta = data["machine"]
        for row in data["rows"]:
            if "seconds" in row:
                points.setdefault(row["mode"], {})[row["S"]] = (row["seconds"], row["x_sdpa"])
    if not points:
        return None

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 6))
    lengths = []
    for mode, label, colour, style, offset in E2E_SERIES:
        series = points.get(mode)
        if not series:
            continue
        xs = sorted(series)
        lengths += xs
        ax.plot(xs, [series[x][0] for x in xs], style, color=colour, marker="o", markersize=5, linewidth=2,
                label=label)
        for x in xs if offset else ():
            ax.annotate(f"{series[x][1]:.2f}x", (x, series[x][0]), textcoords="offset points", xytext=offset,
                        fontsize=8.5, color=colour)
    _length_axis(ax, lengths)
    _log_y(ax, "pre-fill time (s, log scale)")
    fig.suptitle("End-to-end pre-fill, Llama-3-8B shape (32 layers, random bf16 weights), batch 1\n"
                 f"{meta.get('gpu', 'H100')}, torch {meta.get('torch', '?')}, transformers "
                 f"{meta.get('transformers', '?')}; labels: time x sdpa in the same run", fontsize=10)
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.97, top=0.88, bottom=0.15)
    return _save(fig, out, "e2e_prefill", sources)


def _length_label(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


@figure("niah")
def niah(results: Path, out: Path) -> Path | None:
    """Needle in a haystack: accuracy (colour, 0-100%) by needle depth (y) and prompt length (x),
    one heat map per method, from the "niah" cells of the accuracy tables."""
    import math

    import numpy as np

    cells: dict[str, dict[tuple[int, int], float]] = {}
    samples: set[int] = set()
    sources = []
    meta: dict = {}
    for path in sorted(results.glob(NIAH_RUNS)):
        data = _read(results, path.name)
        if not data.get("niah"):
            continue
        sources.append(path.name)
        meta = data.get("machine", {})
        for cell in data["niah"]:
            cells.setdefault(cell["method"], {})[(cell["S"], cell["depth"])] = cell["accuracy"]
            samples.add(cell["samples"])
    if not cells:
        return None

    plt = _pyplot()
    lengths = sorted({s for grid in cells.values() for s, _ in grid})
    depths = sorted({d for grid in cells.values() for _, d in grid})
    cols = min(len(cells), 4)
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 + 3.4 * cols, 1.6 + 3.6 * rows), squeeze=False)
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("lightgrey")  # a cell the runs did not measure
    for ax, (method, grid) in zip(axes.flat, cells.items()):
        values = np.array([[grid.get((s, d), np.nan) for s in lengths] for d in depths])
        image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [_length_label(s) for s in lengths])
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_title(method, fontsize=10)
    for ax in axes[:, 0]:
        ax.set_ylabel("needle depth (% of the prompt)")
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.subplots_adjust(left=0.1, right=0.87, bottom=0.16, top=0.84, wspace=0.3, hspace=0.45)
    fig.colorbar(image, cax=fig.add_axes([0.9, 0.16, 0.015, 0.68]), label="accuracy (%)")
    per_cell = "/".join(str(n) for n in sorted(samples))
    fig.suptitle(f"Needle in a haystack (task needle), {per_cell} held-out samples per cell\n"
                 f"{meta.get('gpu', '?')}, torch {meta.get('torch', '?')}, transformers "
                 f"{meta.get('transformers', '?')}", fontsize=10)
    return _save(fig, out, "niah", sources)


@figure("finetune")
def finetune(results: Path, out: Path) -> Path | None:
    """Training loss against step of a dense and a sparse fine-tune of the same model, with
    each run's median time per step in the legend."""
    files = sorted(results.glob(FINETUNE_RUNS))
    if not files:
        return None
    data = _read(results, files[-1].name)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for name, colour in (("dense", "black"), ("sparse", "tab:red")):
        series = data["loss_series"][name]
        speed = "".join(f", {int(length) // 1024}K: {v[name]:.0f} ms/step"
                        for length, v in data["step_ms"].items() if v.get(name))
        ax.plot([s for s, _ in series], [loss for _, loss in series], color=colour, lw=1.2, label=f"{name}{speed}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer + 0.5 x next token)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    stages = ", ".join(f"{length // 1024}K x {steps}" for length, steps, _ in data["schedule"]["stages"])
    sparse = data["sparse_attention"] or {}
    ax.set_title(f"Fine-tune, dense and sparse ({os.path.basename(str(sparse.get('config', '?')))}), "
                 f"stages {stages}", fontsize=10)
    fig.subplots_adjust(bottom=0.16)
    return _save(fig, out, "finetune", [files[-1].name])


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    parser.add_argument("--out", type=Path, default=FIGURES_DIR, help="folder for the PNGs")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=None, help="figures to draw")
    args = parser.parse_args(argv)
    _pyplot()  # fail early, with the install hint, when matplotlib is missing
    written = []
    for name in args.only or FIGURES:
        print(f"{name}:")
        path = FIGURES[name](args.results, args.out)
        if path is None:
            print(f"  no data in {args.results}: {name}.png not written")
        else:
            written.append(path)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
