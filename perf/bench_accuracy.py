"""Accuracy of sparse pre-fill on the retrieval model trained here, against dense.

The table of `minference_flex.evaluate` (the same code as `python -m minference_flex eval`):
per task (minference_flex.tasks), length and method (dense, minference_flex default, searched,
A-shape), exact-match accuracy over held-out samples, and the per-layer attention recall of
each sparse method on the first sample of each task and length. Data parallel under
`accelerate launch --num_processes N perf/bench_accuracy.py ...`, with one table written by
the main process.

Usage: python perf/bench_accuracy.py [--lengths 4096 8192 16384] [--samples 50]
    [--methods dense default searched a-shape] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minference_flex.evaluate import add_arguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser, parser.parse_args(argv))


if __name__ == "__main__":
    main()
