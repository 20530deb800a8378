"""refine_by_logits: per layer, the cheapest candidate that keeps the model's predictions close
to dense and really computes fewer tiles (CPU, tiny random models)."""

from __future__ import annotations

import json
import random

import pytest
import torch

import minference_flex as mf
from tests.models import tiny_llama_config, tiny_model
from minference_flex.cli.main import main
from minference_flex.patterns.config import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern
from minference_flex.pattern_search.refine import mean_kl, refine_by_logits
from minference_flex.pattern_search.search import search
from minference_flex.metrics.tile_count import count_tiles

CANDIDATES = [HeadPattern(VERTICAL_SLASH, 1000, 6096), HeadPattern(A_SHAPE, 64, 128), HeadPattern(BLOCK_SPARSE, 0, 0)]
# a larger initial spread than transformers' default: peaked attention, so a sparse pattern
# visibly moves the logits
LLAMA = tiny_llama_config(hidden_size=64, intermediate_size=128, initializer_range=0.3)


def _model():
    return tiny_model(LLAMA, seed=random.randrange(2**31))


def _prompts(n=2, length=None):
    length = length or random.randrange(900, 1100)
    return [torch.randint(0, 128, (length,)).tolist() for _ in range(n)]


def _kl_and_fraction(model, config, prompts, positions):
    """The mean KL and tile fraction of `config`, computed apart from the refinement."""
    ids = [torch.tensor([p]) for p in prompts]
    with torch.no_grad():
        dense = [model(i, logits_to_keep=positions).logits.float().log_softmax(-1) for i in ids]
    mf.compile(model, config, min_sparse_len=min(len(p) for p in prompts))
    try:
        with torch.no_grad(), count_tiles() as tiles:
            sparse = [model(i, logits_to_keep=positions).logits.float().log_softmax(-1) for i in ids]
    finally:
        mf.restore(model)
    return mean_kl(dense, sparse), tiles.fraction


def test_loose_bound_takes_each_layers_cheapest_candidate_and_reports_what_it_measures():
    model = _model()
    result = search(model, length=1024, candidates=CANDIDATES, progress=False)
    assert all(p == CANDIDATES[0] for layer in result.config for p in layer), "dense-equivalent start"
    prompts, positions = _prompts(), random.choice([1, 4])
    refined = refine_by_logits(model, result, prompts, positions=positions, kl_tolerance=1e9, progress=False)
    cheapest = min(CANDIDATES[1:], key=lambda p: sum(
        result.candidate_cost[0][h][CANDIDATES.index(p)] for h in range(4)))
    assert refined.config == [[cheapest] * 4] * 2
    assert refined.changed == [(0, cheapest), (1, cheapest)]
    kl, fraction = _kl_and_fraction(model, refined.config, prompts, positions)
    assert refined.kl == pytest.approx(kl, rel=1e-4, abs=1e-7) and kl > 0.01, "the sparse config moves the logits"
    assert refined.tile_fraction == pytest.approx(fraction) and fraction < refined.searched_tile_fraction == 1.0
    assert refined.recall == [[result.candidate_recall[i][h][CANDIDATES.index(cheapest)] for h in range(4)]
                              for i in range(2)]
    assert refined.forwards == 2 + 2 * 3  # dense, searched, then the first candidate of each layer passes


def test_tight_bound_or_no_fewer_tiles_keeps_the_searched_config():
    model = _model()
    result = search(model, length=1024, candidates=CANDIDATES, progress=False)
    prompts = _prompts()
    tight = refine_by_logits(model, result, prompts, kl_tolerance=1e-6, progress=False)
    assert tight.config == result.config and tight.changed == [] and tight.kl < 1e-6
    # prompts shorter than min_sparse_len run dense: no candidate computes fewer tiles
    dense = refine_by_logits(model, result, prompts, kl_tolerance=1e9, min_sparse_len=10**6, progress=False)
    assert dense.config == result.config and dense.changed == []
    assert dense.tile_fraction == dense.searched_tile_fraction == 1.0


def test_a_bound_between_the_candidates_keeps_the_model_within_it():
    model = _model()
    result = search(model, length=1024, candidates=CANDIDATES, progress=False)
    prompts = _prompts()
    loose = refine_by_logits(model, result, prompts, kl_tolerance=1e9, progress=False)
    bound = loose.kl / 4  # the all-cheapest config is out of bounds
    refined = refine_by_logits(model, result, prompts, kl_tolerance=bound, progress=False)
    assert refined.kl <= bound
    kl, fraction = _kl_and_fraction(model, refined.config, prompts, 1)
    assert kl == pytest.approx(refined.kl, rel=1e-4, abs=1e-7) and fraction == pytest.approx(refined.tile_fraction)
    assert refined.config != loose.config


def test_bad_arguments_name_the_problem():
    model = _model()
    result = search(model, length=256, candidates=CANDIDATES, progress=False)
    prompts = _prompts(1, 256)
    with pytest.raises(ValueError, match="positions must be an int >= 1"):
        refine_by_logits(model, result, prompts, positions=0)
    with pytest.raises(ValueError, match="kl_tolerance must be a number >= 0"):
        refine_by_logits(model, result, prompts, kl_tolerance=-1.0)
    with pytest.raises(TypeError, match="non-empty list"):
        refine_by_logits(model, result, [])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 128\)"):
        refine_by_logits(model, result, [[5, 300, 7]])
    with pytest.raises(ValueError, match="fewer than positions=8"):
        refine_by_logits(model, result, [[1, 2, 3]], positions=8)


def test_cli_refines_and_writes_the_refined_config(tmp_path, capsys):
    _model().save_pretrained(tmp_path / "model")
    calib, extra = tmp_path / "calib.json", tmp_path / "extra.json"
    calib.write_text(json.dumps(_prompts(1, 1024)[0]))
    extra.write_text(json.dumps(_prompts(1, 1024)[0]))
    out = tmp_path / "patterns.json"
    argv = ["search", "--model", str(tmp_path / "model"), "--out", str(out), "--calibration", str(calib),
            "--budget", "vs:1000,6096", "--budget", "a:64,128", "--budget", "bs", "--device", "cpu", "--quiet",
            "--refine-kl", "1e9", "--refine-prompts", str(extra)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "refined against the model's predictions: 2 layers made cheaper" in printed
    config = mf.load_pattern_config(str(out), 2, 4)
    assert len({p for layer in config for p in layer}) == 1 and config[0][0] != CANDIDATES[0]
    with pytest.raises(SystemExit):
        main(argv[:-4] + ["--refine-prompts", str(extra)])
    assert "--refine-prompts needs --refine-kl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv[:-4] + ["--refine-kl", "-1"])
    assert "--refine-kl must be >= 0" in capsys.readouterr().err
