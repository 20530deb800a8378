"""Accuracy of sparse pre-fill on the retrieval model trained here, against dense.

The table of `minference_flex.evaluation.evaluate` (the same code as `python -m minference_flex eval`):
per task (minference_flex.retrieval.tasks), length and method (dense, searched, searched-chunked,
VS (1000, 6096), VS (30, 800), block-sparse top 100, A-shape (128, 4096)), the exact-match
accuracy over held-out samples, the fraction of dense causal 64 x 64 tiles the kernels
computed for them, and the per-layer attention recall of each sparse method on the first
sample of each task and length. With --niah-depths, also a needle-in-a-haystack sweep (the
JSON's "niah" list; `python perf/plot.py --only niah` draws its heat maps). Data parallel
under `accelerate launch --num_processes N perf/bench_accuracy.py ...`, with one table
written by the main process.

Usage: python perf/bench_accuracy.py [--lengths 4096 8192 16384] [--samples 50]
    [--methods dense searched searched-chunked default vs-30-800 bs-100 a-shape] [--chunk 8192]
    [--niah-depths 0 10 ... 100] [--niah-samples 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minference_flex.evaluation.evaluate import add_arguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser, parser.parse_args(argv))


if __name__ == "__main__":
    main()
