"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tests.helpers import REPO_ROOT  # noqa: E402


def test_kernels_compile_for_h100():
    """The interpreter runs the kernels in the rest of the CPU suite but does not type-check
    them like the GPU compiler does; this compiles each one down to a cubin (tests/hopper_compile.py)."""
    pytest.importorskip("triton.backends.nvidia")
    root = REPO_ROOT
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-m", "tests.hopper_compile"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "all kernels compiled for sm_90" in done.stdout
