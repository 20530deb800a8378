"""Command line: `python -m minference_flex demo [--seq-len N] [--device cpu|cuda]`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minference-flex", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run each sparse pattern against dense attention")
    demo.add_argument("--seq-len", type=int, default=None, help="tokens (default: 2048 on CPU, 131072 on GPU)")
    demo.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.seq_len is not None and args.seq_len < 1:
            parser.error(f"--seq-len must be >= 1, got {args.seq_len}")
        from .demo import run_demo

        run_demo(args.seq_len, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
