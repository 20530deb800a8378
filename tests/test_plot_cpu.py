"""perf/plot.py draws every registered figure from the committed JSON, on CPU."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from perf import plot  # noqa: E402


def test_every_figure_is_drawn_from_the_committed_json(tmp_path):
    from matplotlib.image import imread

    written = plot.main(["--out", str(tmp_path)])
    assert sorted(p.name for p in written) == sorted(f"{name}.png" for name in plot.FIGURES)
    for path in written:
        assert path.parent == tmp_path
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
