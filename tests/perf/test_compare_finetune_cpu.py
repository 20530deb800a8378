"""perf/compare_finetune.py: the dense and sparse fine-tunes' table from their training logs."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from perf import compare_finetune


def _log(sparse: bool, losses: dict[int, float], ms: dict[int, tuple[int, float]], final: dict | None = None) -> dict:
    """A training log as minference_flex.retrieval.train writes it; ms: step -> (length, step_ms)."""
    steps = [{"step": s, "length": ms[s][0], "loss": loss, "step_ms": ms[s][1]} for s, loss in sorted(losses.items())]
    return {"preset": {"stages": [[4096, 100, 1], [8192, 100, 1]], "tasks": ["passkey", "multikey"], "lr": 5e-4,
                       "lm_weight": 0.5, "replay": 0.3},
            "init": "minference_flex/models/retrieval_llama", "steps": steps, "train_minutes": random.random(),
            "sparse_attention": {"config": "vs.json", "min_sparse_len": 1024} if sparse else None,
            "final": final or {}, "steps_done": max(losses)}


def test_windows_medians_and_accuracy_come_from_both_logs():
    window = random.choice([20, 30, 50])
    steps = list(range(10, 201, 10))
    losses = {name: {s: random.random() for s in steps} for name in ("dense", "sparse")}
    del losses["sparse"][steps[-1]]  # a step only one log holds is left out of both
    ms = {name: {s: (4096 if s <= 100 else 8192, random.uniform(10, 100)) for s in steps} for name in ("dense", "sparse")}
    finals = {name: {"4096": {"passkey": random.random()}, "8192": {"multikey": random.random()}}
              for name in ("dense", "sparse")}
    dense = _log(False, losses["dense"], ms["dense"], finals["dense"])
    sparse = _log(True, losses["sparse"], ms["sparse"], finals["sparse"])
    table = compare_finetune.compare(dense, sparse, window)
    common = steps[:-1]
    want = {}
    for s in common:
        want.setdefault((s - 1) // window, []).append(s)
    assert [(w["first_step"], w["last_step"]) for w in table["loss"]] == [(k * window + 1, (k + 1) * window)
                                                                          for k in sorted(want)]
    for w, (k, group) in zip(table["loss"], sorted(want.items())):
        for name in ("dense", "sparse"):
            assert w[name] == pytest.approx(statistics.fmean(losses[name][s] for s in group))
    for length in (4096, 8192):
        for name in ("dense", "sparse"):
            values = [v for s, (n, v) in ms[name].items() if n == length and s in losses[name]]
            assert table["step_ms"][str(length)][name] == pytest.approx(statistics.median(values))
    assert table["final_accuracy"]["8192"]["sparse"] == finals["sparse"]["8192"]
    assert table["sparse_attention"]["config"] == "vs.json"
    json.dumps(table)  # what --out writes
    text = compare_finetune.format_table(table)
    assert "| 8192 | multikey |" in text and "sparse / dense" in text


def test_mismatched_runs_are_refused_with_the_fix():
    losses, ms = {10: 1.0, 20: 0.5}, {10: (4096, 5.0), 20: (4096, 5.0)}
    dense, sparse = _log(False, losses, ms), _log(True, losses, ms)
    with pytest.raises(ValueError, match="pass the dense run first"):
        compare_finetune.compare(sparse, dense)
    with pytest.raises(ValueError, match="pass the run made with --sparse-attention second"):
        compare_finetune.compare(dense, _log(False, losses, ms))
    other = _log(True, losses, ms)
    other["init"] = "elsewhere"
    with pytest.raises(ValueError, match="same --init model"):
        compare_finetune.compare(dense, other)
    other = _log(True, losses, ms)
    other["preset"]["lr"] = 1e-3
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        compare_finetune.compare(dense, other)
    with pytest.raises(ValueError, match="window must be an int >= 10"):
        compare_finetune.compare(dense, sparse, 5)


def test_folders_without_a_training_log_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_finetune.main([str(tmp_path), str(tmp_path)])
    assert "no train_log.json" in capsys.readouterr().err
    (tmp_path / "train_log.json").write_text(json.dumps({"steps": []}))
    with pytest.raises(ValueError, match="not a training log"):
        compare_finetune.read_log(str(tmp_path))
