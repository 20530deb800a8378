"""The shipped retrieval model: it loads, answers with sparse pre-fill, and the demo runs on it."""

from __future__ import annotations

import random

import pytest

import minference_flex as mf
from minference_flex.patterns.config import VERTICAL_SLASH, HeadPattern, load_pattern_config
from minference_flex.retrieval.model import (
    MODEL_DIR,
    answer,
    load_retrieval_model,
    searched_config_path,
    shipped_model_available,
)
from minference_flex.retrieval.tasks import TOKENIZER, exact_match, make_sample
from minference_flex.metrics.tile_count import count_tiles
from tests.helpers import samples_the_model_answers

pytestmark = pytest.mark.skipif(
    not shipped_model_available(), reason=f"no trained model in {MODEL_DIR} (train one: python -m minference_flex.retrieval.train)"
)


def test_searched_config_gives_the_dense_answers():
    """Sparse pre-fill with the shipped `pattern_config.json` gives the model's own (dense)
    answers on fresh held-out samples of every task it was trained on. At CPU lengths that
    config keeps nearly every tile (its savings start at 32K: MODEL_CARD.md), so this checks
    the shipped path, and the next test the retrieval through sparse patterns."""
    model = load_retrieval_model()
    config = searched_config_path()
    assert config is not None, "the searched pattern config must ship next to the model"
    load_pattern_config(config, model.config.num_hidden_layers, model.config.num_attention_heads)
    samples = [make_sample(task, 2048 + random.randrange(64), 10**9 + random.randrange(10**6))
               for task in ("passkey", "needle", "multikey")]
    dense = [answer(model, s) for s in samples]
    mf.compile(model, config, min_sparse_len=1024)
    try:
        sparse = [answer(model, s) for s in samples]
    finally:
        mf.restore(model)
    assert sparse == dense, [TOKENIZER.decode(a) for a in sparse + dense]


@pytest.mark.slow
def test_answers_passkey_and_multikey_through_sparse_patterns():
    """Vertical-slash (30, 128) on every head: the retrieval heads must find the needle among
    the estimated columns (multikey: the asked one of four) while about half the causal
    tiles are computed."""
    model = load_retrieval_model()
    samples = {task: samples_the_model_answers(model, task, 2048)[0] for task in ("passkey", "multikey")}
    patterns = [[HeadPattern(VERTICAL_SLASH, 30, 128)] * model.config.num_attention_heads] * model.config.num_hidden_layers
    mf.compile(model, patterns, min_sparse_len=1024)
    try:
        for task, sample in samples.items():
            with count_tiles() as tiles:
                got = answer(model, sample)
            assert exact_match(got, sample.answer), (task, sample.length, TOKENIZER.decode(got), TOKENIZER.decode(sample.answer))
            assert tiles.fraction < 0.7, f"{task}: {tiles.fraction:.2f} of the causal tiles computed"
    finally:
        mf.restore(model)


def test_demo_model_part(capsys):
    from minference_flex.cli.passkey_demo import run_passkey_demo

    row = run_passkey_demo(seq_len=2048, device="cpu", seed=random.randrange(10**6))
    out = capsys.readouterr().out
    assert "pass key" in out and "pre-fill: sparse" in out
    assert row["sparse_answer"] == row["dense_answer"]
    assert 0 < row["logits_rel_error"] < 0.5
    assert 0 < row["tile_fraction"] <= 1.0
