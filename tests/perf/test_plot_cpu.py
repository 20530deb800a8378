"""perf/plot.py draws every registered figure from the committed JSON, on CPU."""

from __future__ import annotations

import json
import random
import shutil

import pytest

pytest.importorskip("matplotlib")

from perf import plot  # noqa: E402


def _niah_table(path, methods, lengths, depths, accuracy, samples=5):
    """An accuracy table holding only a needle sweep, accuracy(method, S, depth) in %."""
    niah = [{"S": s, "depth": d, "method": m, "accuracy": accuracy(m, s, d), "samples": samples, "tile_fraction": 1.0}
            for s in lengths for d in depths for m in methods]
    machine = {"gpu": "synthetic", "torch": "-", "transformers": "-"}
    path.write_text(json.dumps({"machine": machine, "rows": [], "recall": [], "niah": niah}))


def _finetune_table(path):
    """A compare_finetune.py table of two synthetic runs with falling losses."""
    from perf import compare_finetune

    def log(sparse):
        steps = [{"step": s, "length": 8192, "loss": 2.0 / s**0.5 + random.random() / 10, "step_ms": 50.0 + 30 * (not sparse)}
                 for s in range(10, 310, 10)]
        return {"preset": {"stages": [[8192, 300, 1]], "tasks": ["passkey"], "lr": 1e-3, "lm_weight": 0.5, "replay": 0.3},
                "init": "model", "sparse_attention": {"config": "vs.json"} if sparse else None, "steps": steps,
                "final": {"8192": {"passkey": 1.0}}, "train_minutes": 1.0, "steps_done": 300}

    path.write_text(json.dumps(compare_finetune.compare(log(False), log(True))))


def test_every_figure_is_drawn_from_the_committed_json(tmp_path):
    """The committed JSON, plus a synthetic needle sweep where none is committed yet."""
    from matplotlib.image import imread

    results = tmp_path / "results"
    shutil.copytree(plot.RESULTS, results)
    if not any("niah" in json.loads(p.read_text()) for p in results.glob(plot.NIAH_RUNS)):
        _niah_table(results / "accuracy_synthetic_niah.json", ["dense", "sparse"], [4096, 8192], [0, 50, 100],
                    lambda m, s, d: random.choice([0.0, 50.0, 100.0]))
    if not list(results.glob(plot.FINETUNE_RUNS)):
        _finetune_table(results / "finetune_synthetic.json")
    out = tmp_path / "figures"
    written = plot.main(["--results", str(results), "--out", str(out)])
    assert sorted(p.name for p in written) == sorted(f"{name}.png" for name in plot.FIGURES)
    for path in written:
        assert path.parent == out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(path)
        assert image.shape[0] >= 400 and image.shape[1] >= 600, (path.name, image.shape)
        # lines and text, not a blank canvas: many distinct pixel values
        assert len({tuple(px) for px in image.reshape(-1, image.shape[-1])[::97].tolist()}) > 20, path.name


def test_a_figure_without_data_is_skipped(tmp_path, capsys):
    written = plot.main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "figures")])
    assert written == []
    assert not (tmp_path / "figures").exists()
    assert "missing, skipped" in capsys.readouterr().out


def test_niah_heat_maps_colour_each_cell_by_accuracy(tmp_path):
    """One panel per method; a later file replaces an earlier one's cells. The sparse method
    misses every needle at depth 50% (red), dense finds them all (green)."""
    from matplotlib.image import imread

    lengths = sorted(random.sample([1024, 2048, 4096, 8192, 16384], 3))
    depths = list(range(0, 101, random.choice([10, 25])))
    _niah_table(tmp_path / "accuracy_a.json", ["dense", "sparse"], lengths, depths, lambda m, s, d: 0.0)
    _niah_table(tmp_path / "accuracy_b.json", ["dense", "sparse"], lengths, depths,
                lambda m, s, d: 0.0 if m == "sparse" and d == 50 else 100.0)
    (tmp_path / "accuracy_c.json").write_text(json.dumps({"rows": [], "recall": []}))  # a table without a sweep
    path = plot.niah(tmp_path, tmp_path / "figures")
    assert path == tmp_path / "figures" / "niah.png"
    image = imread(path)[..., :3]
    red = (image[..., 0] > 0.55) & (image[..., 1] < 0.2) & (image[..., 2] < 0.25)
    green = (image[..., 1] > 0.35) & (image[..., 0] < 0.2) & (image[..., 2] < 0.3)
    assert green.sum() > 3 * red.sum() > 0, "one red row of cells in one panel; the rest green"
    # the red cells are in the right-hand (sparse) panel
    columns = red.any(0).nonzero()[0]
    assert columns.min() > image.shape[1] // 2
