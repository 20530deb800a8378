"""Run a benchmark suite.

    python -m perf SUITE [--out DIR] [--part PART ...] [--gpu-tests] [--dry-run] [OPTIONS ...]
    python -m perf SUITE --help      (what the suite runs, its parts and their commands)

OPTIONS go to the suite's script, after its defaults (`python -m perf e2e --lengths 131072`
replaces the default lengths). Results go to DIR (default perf/results) as
SUITE_DATE_COMMIT_GPU.json, with a tag (`_512k`, `_searched`, ...) before .json where a suite
writes several files; the commit is "nogit" outside a git checkout, the GPU "cpu" without CUDA.

  --out DIR      where the results go (default perf/results)
  --part PART    run this part of the suite (repeatable; default: the suite's default parts)
  --gpu-tests    first run the suite's GPU tests (pytest -m gpu); a failure stops the run
  --dry-run      print the commands and file names, run nothing
"""

from __future__ import annotations

import datetime
import gc
import importlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from perf.common import REPO_ROOT, machine
from perf.suites import SUITES, Run, Step, Suite

DEFAULT_OUT = os.path.join("perf", "results")


@dataclass
class RunnerOptions:
    out: str = DEFAULT_OUT
    parts: list[str] = field(default_factory=list)
    gpu_tests: bool = False
    dry_run: bool = False
    help: bool = False
    options: list[str] = field(default_factory=list)  # for the suite's script


def usage() -> str:
    lines = [__doc__.strip(), "", "suites:"]
    width = max(len(name) for name in SUITES) + 2
    lines += [f"  {name:<{width}}{suite.summary}" for name, suite in SUITES.items()]
    return "\n".join(lines)


def split_options(args: list[str]) -> RunnerOptions:
    """The runner's own options (anywhere after the suite's name) apart from the suite's."""
    parsed = RunnerOptions()
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in ("--out", "--part"):
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"{name} needs a value")
                i, value = i + 1, args[i + 1]
            if name == "--out":
                parsed.out = value
            else:
                parsed.parts.append(value)
        elif arg == "--gpu-tests":
            parsed.gpu_tests = True
        elif arg == "--dry-run":
            parsed.dry_run = True
        elif arg in ("-h", "--help"):
            parsed.help = True
        else:
            parsed.options.append(arg)
        i += 1
    return parsed


def gpu_and_commit() -> tuple[str, str]:
    """(GPU name or "cpu" without CUDA, short commit or "nogit"), from perf.common.machine()."""
    import torch

    info = machine()
    return (info["gpu"] if torch.cuda.is_available() else "cpu"), info["commit"]


def suite_help(suite: Suite, run: Run) -> str:
    defaults = suite.default_parts or tuple(suite.parts)
    lines = [f"python -m perf {suite.name}: {suite.summary}", "",
             "parts: " + ", ".join(p + (" (default)" if p in defaults else "") for p in suite.parts)]
    if suite.gpu_tests:
        lines.append("--gpu-tests runs first: python -m pytest -m gpu " + " ".join(suite.gpu_tests))
    for part in suite.parts:
        lines.append(f"\n{part}:")
        for step in suite.steps_of([part]):
            lines.append("  " + step.describe(run, list(suite.default_options)))
    scripts = sorted({s.target() for s in suite.steps if s.options})
    lines.append("\nOptions after the suite's name go to: " + ", ".join(scripts) + " (see its --help).")
    return "\n".join(lines)


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_step(step: Step, run: Run, options: list[str]) -> int:
    """Run one step; its exit status."""
    if step.call is not None:
        step.call(run)
        return 0
    argv = step.argv(run, options)
    if step.command:
        return subprocess.run([*step.command, *argv], cwd=REPO_ROOT, env=_subprocess_env()).returncode
    try:
        importlib.import_module(step.script).main(argv)
    except SystemExit as done:  # argparse errors, "needs a CUDA GPU"
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
            return 1
        return done.code or 0
    finally:  # the next step starts with the memory this one held given back
        gc.collect()
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            sys.modules["torch"].cuda.empty_cache()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    suite = SUITES.get(name)
    if suite is None:
        print(f"python -m perf: unknown suite {name!r}; known suites: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    try:
        opts = split_options(rest)
    except ValueError as exc:
        print(f"python -m perf {name}: {exc}", file=sys.stderr)
        return 2
    unknown = [p for p in opts.parts if p not in suite.parts]
    if unknown:
        print(f"python -m perf {name}: unknown part {unknown[0]!r}; its parts: {', '.join(suite.parts)}",
              file=sys.stderr)
        return 2
    parts = list(dict.fromkeys(opts.parts)) or list(suite.default_parts or suite.parts)
    steps = suite.steps_of(parts)
    gpu, commit = gpu_and_commit()
    run = Run(name, os.path.abspath(opts.out), datetime.date.today().isoformat(), commit, gpu, parts)
    if opts.help:
        print(suite_help(suite, run))
        return 0
    targets = sorted({s.target() for s in steps if s.options})
    if opts.options and len(targets) != 1:
        where = f"parts {', '.join(parts)} " + (f"run {', '.join(targets)}" if targets else "take none")
        print(f"python -m perf {name}: options after the suite's name go to one script, but the {where}; "
              f"choose a part with --part ({', '.join(suite.parts)})", file=sys.stderr)
        return 2
    options = opts.options or list(suite.default_options)
    if opts.dry_run:
        if opts.gpu_tests and suite.gpu_tests:
            print("python -m pytest -m gpu -q --tb=short " + " ".join(suite.gpu_tests))
        for step in steps:
            print(step.describe(run, options))
        return 0
    for key, value in suite.env:
        os.environ.setdefault(key, value)
    os.makedirs(run.out_dir, exist_ok=True)
    if opts.gpu_tests and suite.gpu_tests:
        tests = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "--tb=short", *suite.gpu_tests]
        code = subprocess.run(tests, cwd=REPO_ROOT, env=_subprocess_env()).returncode
        if code:
            print(f"python -m perf {name}: the GPU tests failed (exit {code})", file=sys.stderr)
            return code
    for step in steps:
        print(f"== {name} [{step.part}] {step.describe(run, options)}", flush=True)
        start = time.perf_counter()
        code = run_step(step, run, options)
        run.timings[step.tag or step.part] = time.perf_counter() - start
        if code:
            print(f"python -m perf {name}: part {step.part} failed (exit {code})", file=sys.stderr)
            return code
    stem = run.path(ext="")
    written = sorted(p for p in os.listdir(run.out_dir) if os.path.join(run.out_dir, p).startswith(stem))
    print(f"{name}: done; in {run.out_dir}: " + (", ".join(written) or "nothing written"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
