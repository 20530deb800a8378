"""`demo --model`: a real LLM answers a question about a long real document with sparse and dense
pre-fill (CPU, SmolLM2 at a short length), and its bad arguments are named."""

from __future__ import annotations

import pytest

from minference_flex.cli.main import main

from tests.helpers import smollm2_or_skip  # noqa: E402

smollm2_or_skip()


@pytest.mark.slow
def test_demo_on_smollm2_prints_both_answers_and_the_tiles(capsys):
    from minference_flex.cli.real_demo import run_real_demo

    row = run_real_demo("smollm2", 1100, "cpu")
    out = capsys.readouterr().out
    assert "question: What is the special magic number for" in out
    assert "dense " in out and "sparse " in out and "of the causal 64x64 tiles" in out
    assert row["dense_correct"] and row["sparse_correct"], row
    assert 0 < row["tile_fraction"] and row["dense_prefill_s"] > 0 and row["sparse_prefill_s"] > 0


@pytest.mark.parametrize("argv, message", [
    (["demo", "--model", "/no/such/model"], "no such file or folder"),
    (["demo", "--config", "x.json"], "--config needs --model"),
    (["demo", "--model", "smollm2", "--config", "/no/such.json"], "no such file"),
    (["eval", "--model", "/no/such/model.gguf"], "--model"),
    (["search", "--model", "/no/such", "--out", "c.json"], "no such file or folder"),
])
def test_bad_model_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
