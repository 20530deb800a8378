"""Command line.

  python -m minference_flex demo [--seq-len N] [--passkey-len N] [--device cpu|cuda] [--model NAME [--config F]]
  python -m minference_flex search --model DIR --out config.json [--length N] [--budget SPEC ...]
      [--refine-kl NATS [--refine-positions N] [--refine-prompts FILE ...]]
  [accelerate launch --num_processes N -m] minference_flex eval --out table.json
      [--lengths N ...] [--tasks T ...] [--samples N] [--methods M ...] [--chunk N]
      [--niah-depths PERCENT ...] [--niah-samples N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _add_search(commands) -> argparse.ArgumentParser:
    from minference_flex.pattern_search.search import candidate_spec_help

    search = commands.add_parser(
        "search",
        help="find each head's sparse pattern for a model (writes MInference's config format)",
        description="Run the model densely over a calibration prompt and give each head the cheapest "
        "candidate pattern whose attention recall is within --tolerance of the best candidate.",
    )
    search.add_argument("--model", required=True,
                        help="a local model directory (saved with save_pretrained), a .gguf file or a folder with "
                        "one, or a short name of an installable model (smollm2, gemma3-270m)")
    search.add_argument("--out", required=True, help="where to write the pattern config (.json)")
    search.add_argument("--length", type=int, default=None,
                        help="calibration tokens (default: a known model's trained length, else 32768 on CUDA and "
                        "4096 on CPU, or the whole --calibration)")
    search.add_argument("--calibration", default=None,
                        help="a text file (tokenized with the model's tokenizer) or a .json list of token ids; "
                        "default: for a model with a tokenizer, the calibration region of the book that the "
                        "real-text tasks never use (minference_flex.llms.text_tasks); else a built-in synthetic prompt")
    search.add_argument("--budget", action="append", default=None, metavar="SPEC",
                        help=f"a candidate pattern, repeatable: {candidate_spec_help()} (default: MInference's set)")
    search.add_argument("--tolerance", type=float, default=0.02,
                        help="recall a head may give up for a cheaper pattern (default 0.02)")
    search.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompt (default 0)")
    search.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    search.add_argument("--refine-kl", type=float, default=None, metavar="NATS",
                        help="then refine the config against the model's predictions (minference_flex.pattern_search.refine): "
                             "per layer, the cheapest candidate that keeps the mean KL(dense || sparse) of the "
                             "calibration prompts' last --refine-positions next-token distributions <= NATS")
    search.add_argument("--refine-positions", type=int, default=1,
                        help="positions per prompt the refinement compares (default 1: the next token)")
    search.add_argument("--refine-prompts", nargs="+", default=None, metavar="FILE",
                        help="more calibration prompts for the refinement (.json lists of token ids); the "
                             "--calibration prompt is always one")
    search.add_argument("--exact-masks", action="store_true",
                        help="with --refine-kl: vertical-slash heads attend through their exact masks in the "
                        "refinement's forwards (for CPU runs, where Triton is interpreted)")
    search.add_argument("--tables", default=None, metavar="PATH",
                        help="also write the search's tables as JSON: every candidate's recall and cost per layer "
                        "and head, the chosen ones, the calibration length and time, the machine")
    search.add_argument("--searched-out", default=None, metavar="PATH",
                        help="with --refine-kl: also write the recall search's config, before refinement, here")
    search.add_argument("--quiet", action="store_true",
                        help="no progress on stderr; print the per-layer summary on stdout instead")
    return search


def _check_search_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    """Validate before loading anything; returns the candidate list."""
    import torch

    from minference_flex.pattern_search.search import DEFAULT_CANDIDATES, parse_candidate

    from minference_flex.llms.pretrained import resolve_model

    try:
        resolve_model(args.model)
    except ValueError as exc:
        parser.error(f"--model {exc}; download hub models first, e.g. `huggingface-cli download NAME --local-dir DIR`")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        parser.error(
            f"--out {args.out}: cannot write a file there; pass a file path in an existing, writable directory"
        )
    if args.length is not None and args.length < 1:
        parser.error(f"--length must be >= 1, got {args.length}")
    if not 0 <= args.tolerance < 1:
        parser.error(f"--tolerance must be in [0, 1), got {args.tolerance}")
    if args.calibration is not None and not os.path.isfile(args.calibration):
        parser.error(f"--calibration {args.calibration}: no such file; pass a text file or a .json list of token ids")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu")
    if args.refine_kl is not None and not args.refine_kl >= 0:
        parser.error(f"--refine-kl must be >= 0 nats, got {args.refine_kl}")
    if args.refine_positions < 1:
        parser.error(f"--refine-positions must be >= 1, got {args.refine_positions}")
    if args.searched_out and args.refine_kl is None:
        parser.error("--searched-out needs --refine-kl (without it --out is the searched config)")
    if args.refine_prompts and args.refine_kl is None:
        parser.error("--refine-prompts needs --refine-kl (the refinement's KL bound)")
    for path in args.refine_prompts or ():
        if not os.path.isfile(path) or not path.endswith(".json"):
            parser.error(f"--refine-prompts {path}: not a .json file; pass JSON lists of token ids")
    if args.budget is None:
        return list(DEFAULT_CANDIDATES)
    candidates = []
    for spec in args.budget:
        try:
            candidates.append(parse_candidate(spec))
        except ValueError as exc:
            parser.error(f"--budget: {exc}")
    return candidates


def _read_calibration(parser: argparse.ArgumentParser, path: str | None, flag: str = "--calibration"):
    if path is None or not path.endswith(".json"):
        return path
    try:
        with open(path) as f:
            ids = json.load(f)
    except json.JSONDecodeError as exc:
        parser.error(f"{flag} {path}: not valid JSON ({exc}); pass a JSON list of token ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        parser.error(f"{flag} {path}: expected a non-empty JSON list of integer token ids")
    return ids


def _run_search(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    candidates = _check_search_args(parser, args)
    calibration = _read_calibration(parser, args.calibration)
    import torch

    from minference_flex.patterns.config import save_pattern_config
    from minference_flex.llms.pretrained import known_model, load_pretrained
    from minference_flex.pattern_search.search import calibration_ids, search
    from minference_flex.llms.text_tasks import calibration_ids as book_calibration_ids

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, tokenizer = load_pretrained(args.model, device)
    except (ValueError, OSError) as exc:
        parser.error(f"--model {args.model}: cannot load it ({exc})")
    extra = [_read_calibration(parser, path, "--refine-prompts") for path in args.refine_prompts or ()]
    try:
        if calibration is None and tokenizer is not None:
            known = known_model(model)
            default = known.trained_length if known else (32768 if device == "cuda" else 4096)
            calibration = book_calibration_ids(tokenizer, args.length or default)
        ids = calibration_ids(model, calibration, args.length, args.seed, tokenizer)[0]  # the search's and the refinement's
        result = search(model, ids, candidates=candidates, tolerance=args.tolerance, progress=not args.quiet)
        if args.refine_kl is not None:
            from minference_flex.pattern_search.refine import refine_by_logits

            refined = refine_by_logits(model, result, [ids] + extra, positions=args.refine_positions,
                                       kl_tolerance=args.refine_kl, exact_masks=args.exact_masks,
                                       progress=not args.quiet)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if args.tables:
        _write_tables(result, args.tables, argv_text=" ".join(sys.argv[1:]))
    if args.refine_kl is None:
        result.save(args.out)
    else:
        if args.searched_out:
            result.save(args.searched_out)
        save_pattern_config(refined.config, args.out, scores=[[round(r, 6) for r in layer] for layer in refined.recall])
    if args.quiet:
        print(result.summary())
        if args.refine_kl is not None:
            print(refined.summary())
    elif args.refine_kl is not None:
        print(refined.summary(), file=sys.stderr)
    print(f"wrote {args.out}: use it with minference_flex.compile(model, pattern_config={args.out!r})")


def _write_tables(result, path: str, argv_text: str) -> None:
    """The search's per-candidate tables as JSON (`SearchResult` fields, with the machine)."""
    import dataclasses

    from minference_flex.metrics.machine import machine

    tables = dataclasses.asdict(result)
    tables["config"] = [[list(p) for p in layer] for layer in result.config]
    tables["candidates"] = [list(c) for c in result.candidates]
    with open(path, "w") as f:
        json.dump({"machine": machine(), "command": "python -m minference_flex " + argv_text, **tables}, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minference-flex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="the shipped retrieval model answers a passkey prompt with sparse pre-fill, then each "
        "sparse kernel runs against dense attention",
    )
    demo.add_argument("--seq-len", type=int, default=None,
                      help="kernel part: tokens (default: 2048 on CPU, 131072 on GPU)")
    demo.add_argument("--passkey-len", type=int, default=None,
                      help="model part: prompt tokens (default: the longest length the model was trained on, at most "
                      "2048 on CPU)")
    demo.add_argument("--device", choices=["cpu", "cuda"], default=None)
    demo.add_argument("--model", default=None,
                      help="a real LLM instead (a short name: smollm2, gemma3-270m; a .gguf file or a folder): it "
                      "answers a question about a long real document with sparse and dense pre-fill, side by side")
    demo.add_argument("--config", default=None,
                      help="with --model: a pattern config (default: the one searched for the model, if shipped)")
    search = _add_search(commands)
    evaluate = commands.add_parser(
        "eval", help="accuracy table of sparse pre-fill against dense on the retrieval model; data parallel "
        "under `accelerate launch`",
        description="Exact-match accuracy per task, length and method, the fraction of dense causal 64 x 64 tiles "
        "the kernels computed, and per-layer attention recall, on the shipped retrieval model; with --niah-depths "
        "also a needle-in-a-haystack sweep (the JSON's niah list, drawn by `python perf/plot.py --only niah`). "
        "Under `accelerate launch --num_processes N -m minference_flex eval` the samples are split across the "
        "processes and the main process writes one table, equal to the one-process table.",
    )
    from minference_flex.evaluation.evaluate import add_arguments

    add_arguments(evaluate)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.seq_len is not None and args.seq_len < 1:
            parser.error(f"--seq-len must be >= 1, got {args.seq_len}")
        if args.passkey_len is not None and args.passkey_len < 128:
            parser.error(f"--passkey-len must be >= 128 tokens, got {args.passkey_len}")
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available; use --device cpu")
        if args.config is not None and args.model is None:
            parser.error("--config needs --model (the shipped retrieval model's demo uses its own config)")
        if args.config is not None and not os.path.isfile(args.config):
            parser.error(f"--config {args.config}: no such file; pass a pattern config (.json)")
        if args.model is not None:
            from minference_flex.llms.pretrained import resolve_model
            from minference_flex.cli.real_demo import run_real_demo

            try:
                resolve_model(args.model)
            except ValueError as exc:
                parser.error(f"--model {exc}")
            run_real_demo(args.model, args.passkey_len, args.device, args.config)
            return 0
        from minference_flex.cli.demo import run_demo
        from minference_flex.retrieval.model import MODEL_DIR, shipped_model_available

        if shipped_model_available():
            from minference_flex.cli.passkey_demo import run_passkey_demo

            run_passkey_demo(args.passkey_len, args.device)
        else:
            print(f"(no trained retrieval model in {MODEL_DIR}: skipping the passkey part; "
                  "train one with `python -m minference_flex.retrieval.train --out <that dir>`)")
        run_demo(args.seq_len, args.device)
    elif args.command == "search":
        _run_search(search, args)
    elif args.command == "eval":
        from minference_flex.evaluation.evaluate import run

        run(evaluate, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
