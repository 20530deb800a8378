"""Where a measurement ran: date, commit, GPU (or processor) and library versions, for the
JSON of every table and benchmark."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_commit(repo: str = _PACKAGE_ROOT) -> str:
    """The short (7-digit) commit checked out in `repo`, or "nogit" outside a git checkout."""
    try:
        done = subprocess.run(["git", "-C", repo, "rev-parse", "--short=7", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "nogit"


def machine() -> dict:
    """{"date", "commit", "gpu", "torch", "triton", "transformers"} of this run."""
    import transformers
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
    }
