"""accelerate on CPU: data-parallel evaluation in two processes, models dispatched by a device
map, and the errors for layouts minference_flex does not run (tensor parallelism, one layer's
attention split across devices, a DDP wrapper)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import minference_flex as mf
from minference_flex.evaluate import EvalSpec, build_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_ARGS = ["--lengths", "256", "384", "--tasks", "passkey", "needle", "kv", "--samples", "3",
             "--methods", "dense", "default", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_process_eval_writes_the_one_process_table(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _run([sys.executable, "-m", "minference_flex", "eval", *EVAL_ARGS, "--out", str(one)])
    # `accelerate launch --cpu` starts one process unless MPI is set up; the torchrun launcher
    # (--multi_gpu) starts two, which join over gloo on the CPU
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(_free_port()), "-m", "minference_flex", "eval", *EVAL_ARGS,
          "--out", str(two)])
    single, parallel = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["processes"], parallel["processes"]) == (1, 2)
    assert parallel["rows"] == single["rows"]
    assert parallel["recall"] == single["recall"]
    assert len(single["rows"]) == 2 * 3 * 2 and all(r["samples"] == 3 for r in single["rows"])
    accuracy = {r["task"]: r["accuracy"] for r in single["rows"] if r["method"] == "dense" and r["S"] == 256}
    assert len(set(accuracy.values())) > 1, "tasks of different accuracy make a mixed-up gather visible"


def _record(length, task, sample, hit):
    recall = {"minference_flex default": [0.5, 1.0]} if sample == 0 else None
    return {"S": length, "task": task, "sample": sample, "recall": recall,
            "hits": {"dense": True, "minference_flex default": hit}}


def test_build_table_is_independent_of_record_order():
    spec = EvalSpec((256, 384), ("passkey", "kv"), 2, ("dense", "default"))
    records = [_record(n, t, i, (n + i) % 3 == 0 and t == "kv") for n in (256, 384) for t in ("passkey", "kv")
               for i in range(2)]
    methods = ["dense", "minference_flex default"]
    rows, recall = build_table(records, spec, methods)
    assert build_table(records[::-1], spec, methods) == (rows, recall)
    assert [(r["S"], r["task"], r["method"]) for r in rows][:3] == [
        (256, "passkey", "dense"), (256, "passkey", "minference_flex default"), (256, "kv", "dense")]
    kv_384 = next(r for r in rows if (r["S"], r["task"], r["method"]) == (384, "kv", "minference_flex default"))
    assert kv_384["accuracy"] == 50.0 and kv_384["mean_recall"] == 0.75
    assert len(recall) == 4


def test_eval_spec_and_cli_reject_bad_arguments(capsys):
    with pytest.raises(ValueError, match="methods must be some of dense, default"):
        EvalSpec(methods=("sparse",))
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        EvalSpec(samples=0)
    from minference_flex.__main__ import main

    with pytest.raises(SystemExit):
        main(["eval", "--samples", "0", "--out", "/tmp/never.json"])
    assert "--samples must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--out", "/no/such/dir/table.json"])
    assert "--out /no/such/dir/table.json: cannot write a file there" in capsys.readouterr().err
