"""The benchmark runner `python -m perf SUITE`: its suites, result names, options passed
through to the scripts, and perf/ free of the old per-call scripts."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import types

import pytest

import perf.__main__ as runner
from perf.common import REPO_ROOT, git_commit, result_name
from perf.suites import SUITES

EXPECTED = ["kernels", "e2e", "chunked", "train", "search", "accuracy", "multi-gpu", "tune", "real-models"]


def _perf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perf", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def fixed_machine(monkeypatch):
    monkeypatch.setattr(runner, "gpu_and_commit", lambda: ("NVIDIA H100 80GB HBM3", "63b5c04"))


def test_help_lists_every_suite_with_one_line_each():
    done = _perf("--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\nsuites:\n")[1].splitlines()
    listed = [line.split()[0] for line in lines]
    assert all(line.startswith("  ") and suite.summary in line for line, suite in zip(lines, SUITES.values()))
    assert listed == list(SUITES) and set(EXPECTED) <= set(listed)
    assert all(suite.summary for suite in SUITES.values())


def test_unknown_suite_exits_non_zero_naming_the_known_ones():
    done = _perf("no-such-suite")
    assert done.returncode != 0
    assert "unknown suite 'no-such-suite'" in done.stderr
    assert all(name in done.stderr for name in SUITES)


def test_result_name_has_suite_date_commit_and_gpu():
    assert result_name("e2e", "2026-12-07", "63b5c04", "NVIDIA H100 80GB HBM3") == (
        "e2e_2026-12-07_63b5c04_NVIDIA-H100-80GB-HBM3.json")
    assert result_name("chunked", "2026-12-07", "nogit", "cpu", "512k") == "chunked_2026-12-07_nogit_cpu_512k.json"
    assert result_name("train", "2026-01-02", "abc1234", "NVIDIA H200", "step", ext="") == (
        "train_2026-01-02_abc1234_NVIDIA-H200_step")


def test_commit_outside_git_is_nogit(tmp_path):
    assert git_commit(str(tmp_path)) == "nogit"
    assert re.fullmatch(r"[0-9a-f]{7}|nogit", git_commit())


def test_suite_passes_its_options_through_to_the_script(tmp_path, monkeypatch, fixed_machine):
    """`python -m perf kernels --lengths 4096` calls perf.bench_kernels.main with the suite's
    defaults, then the options (argparse keeps the last --lengths), and --out the named JSON."""
    calls = []
    fake = types.ModuleType("perf.bench_kernels")
    fake.main = lambda argv=None: calls.append(argv)
    monkeypatch.setitem(sys.modules, "perf.bench_kernels", fake)
    assert runner.main(["kernels", "--out", str(tmp_path), "--lengths", "4096", "--no-flex"]) == 0
    [argv] = calls
    out = argv[argv.index("--out") + 1]
    assert os.path.dirname(out) == str(tmp_path)
    assert re.fullmatch(r"kernels_\d{4}-\d\d-\d\d_63b5c04_NVIDIA-H100-80GB-HBM3\.json", os.path.basename(out))
    assert argv[-3:] == ["--lengths", "4096", "--no-flex"] and argv[:3] == ["--lengths", "32768", "131072"]


def test_multi_step_suite_runs_its_steps_in_order_and_options_reach_its_script(tmp_path, monkeypatch,
                                                                               fixed_machine):
    """e2e: the search first, then the pre-fill with the searched config; the options go to
    bench_e2e only."""
    calls = []
    for name in ("perf.bench_search", "perf.bench_e2e"):
        fake = types.ModuleType(name)
        fake.main = lambda argv=None, name=name: calls.append((name, argv))
        monkeypatch.setitem(sys.modules, name, fake)
    assert runner.main(["e2e", "--out", str(tmp_path), "--lengths", "131072"]) == 0
    (first, search_argv), (second, e2e_argv) = calls
    assert (first, second) == ("perf.bench_search", "perf.bench_e2e")
    searched = search_argv[search_argv.index("--out") + 1]
    assert f"searched={searched}" in e2e_argv and e2e_argv[-2:] == ["--lengths", "131072"]
    assert "131072" not in search_argv


def test_a_failing_step_stops_the_suite(tmp_path, monkeypatch, fixed_machine, capsys):
    fake = types.ModuleType("perf.bench_kernels")

    def main(argv=None):
        sys.exit("bench_kernels needs a CUDA GPU")

    fake.main = main
    monkeypatch.setitem(sys.modules, "perf.bench_kernels", fake)
    assert runner.main(["kernels", "--out", str(tmp_path)]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_parts_and_options_that_reach_several_scripts_are_refused(fixed_machine, capsys):
    assert runner.main(["chunked", "--part", "nope"]) == 2
    assert "unknown part 'nope'; its parts: speed, memory, memory-1m" in capsys.readouterr().err
    assert runner.main(["multi-gpu", "--lengths", "4096", "--dry-run"]) == 2
    assert "choose a part with --part" in capsys.readouterr().err
    assert runner.main(["multi-gpu", "--part", "eval", "--samples", "5", "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.endswith("--samples 5") for line in printed] == [True, True, False]


def test_every_suite_has_a_dry_run(fixed_machine, capsys):
    for name, suite in SUITES.items():
        assert runner.main([name, "--dry-run", "--out", "results"]) == 0, name
        printed = capsys.readouterr().out
        assert len(printed.splitlines()) == len(suite.steps_of(list(suite.default_parts or suite.parts)))


def test_perf_scripts_speak_of_no_per_call_scripts_or_output_folders():
    files = glob.glob(os.path.join(REPO_ROOT, "perf", "*.py")) + glob.glob(os.path.join(REPO_ROOT, "perf", "*.sh"))
    assert files
    assert not glob.glob(os.path.join(REPO_ROOT, "perf", "device_*.sh"))
    for path in files:
        with open(path) as f:
            text = f.read()
        assert not re.search(r"device_\w*\.sh|\$OUT\b|\$\{OUT", text), path
