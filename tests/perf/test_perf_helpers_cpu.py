"""Helpers of the benchmarks that decide what is measured: planted indices (structured mode)."""

from __future__ import annotations

import random

import torch

from minference_flex.ops.estimate import FORCED_VERTICAL, vertical_slash_counts
from perf.planted import planted_per_head
from tests.models import tiny_llama_config  # noqa: E402


def test_planted_per_head_respects_each_heads_budget():
    seq_len = random.randrange(3000, 9000)
    budgets = [(30, 100), (500, 700), (0, 0), (1000, 6096)]
    v_idx, s_idx = planted_per_head(2, seq_len, [b[0] for b in budgets], [b[1] for b in budgets], "cpu", seed=3)
    assert v_idx.shape[:2] == s_idx.shape[:2] == (2, 4)
    for h, (nv, ns) in enumerate(budgets):
        for b in range(2):
            cols, diags = v_idx[b, h], s_idx[b, h]
            if nv == ns == 0:
                assert (cols == -1).all() and (diags == -1).all()
                continue
            want_v, want_s = vertical_slash_counts(seq_len, nv, ns)
            assert int((cols >= 0).sum()) == want_v and int((diags >= 0).sum()) == want_s
            assert (cols[:want_v] < seq_len).all() and (diags[:want_s] < seq_len).all()
            assert set(range(FORCED_VERTICAL)) <= set(cols.tolist())
            assert set(range(want_s // 2)) <= set(diags.tolist())  # the local band
            assert (cols[want_v:] == -1).all() and (diags[want_s:] == -1).all()


def test_structured_mode_runs_the_real_estimator_and_hands_over_planted_indices(monkeypatch):
    from minference_flex.patterns import get_pattern
    from minference_flex.patterns.vertical_slash import VERTICAL_SLASH
    from perf import bench_e2e

    calls = []
    pattern = get_pattern(VERTICAL_SLASH)
    real = pattern.estimator
    spy = lambda *a: calls.append(a) or real(*a)  # noqa: E731
    monkeypatch.setattr(pattern, "estimator", spy)
    q, k = torch.randn(1, 4, 700, 32), torch.randn(1, 2, 700, 32)
    with bench_e2e.planted_indices():
        v_idx, s_idx = pattern.estimator(q, k, [30] * 4, [100] * 4, 64, None)
    assert len(calls) == 1, "the real estimator must run (its cost counts)"
    expected = planted_per_head(1, 700, [30] * 4, [100] * 4, "cpu")
    assert torch.equal(v_idx, expected[0]) and torch.equal(s_idx, expected[1])
    assert pattern.estimator is spy and len(calls) == 1  # restored after the block


def test_interleaved_ratio_pairs_each_round_with_its_own_baseline(monkeypatch):
    from perf import bench_kernels

    # per round: the baseline's time, then the candidate's
    times = iter([10.0, 11.0, 20.0, 19.0, 10.0, 30.0])
    monkeypatch.setattr(bench_kernels, "median_ms", lambda fn, rep_ms: next(times))
    ratio, ratios = bench_kernels.interleaved_ratio(lambda: None, lambda: None, 3, 1.0)
    assert ratios == [1.1, 0.95, 3.0]
    assert ratio == 1.1


def test_bench_train_parses_its_arguments(capsys):
    """perf/bench_train.py imports on a machine without a GPU and documents its modes."""
    import pytest

    from perf import bench_train

    with pytest.raises(SystemExit) as done:
        bench_train.main(["--help"])
    assert done.value.code == 0
    assert "--model-step" in capsys.readouterr().out


def test_launch_sweep_times_each_launch_and_names_the_ones_that_fail():
    """--launch-sweep: one figure per (num_warps, num_stages); a launch Triton refuses (out of
    shared memory, say) is recorded with its error instead of ending the run."""
    from perf import bench_train

    def time_launch(warps, stages):
        if stages == 3:
            raise RuntimeError("out of resource: shared memory, Required: 262144\nmore")
        return warps + stages / 10 + 1e-5

    timed = bench_train._sweep(time_launch, [(4, 1), (8, 2), (4, 3)])
    assert timed == {"w4 s1": 4.1, "w8 s2": 8.2,
                     "w4 s3": "RuntimeError: out of resource: shared memory, Required: 262144"}


def test_bench_train_model_step_finds_its_pattern_config():
    """--model-step runs the first 16 layers of the shipped Llama-3-8B-262K config."""
    from minference_flex.patterns.config import load_pattern_config, shipped_config_path
    from perf import bench_train

    path = shipped_config_path(bench_train.SHAPES["llama3-8b"][1])
    assert path is not None and len(load_pattern_config(path, 32, 32)[:16]) == 16


def test_repeated_skip_lists_add_up():
    # the chunked suite (python -m perf chunked) passes --skip twice; when the second list replaced the first, the
    # memory runs ran transformers' flex_attention mode instead of minference_flex's
    from perf import bench_e2e

    args = bench_e2e.build_parser().parse_args(
        ["--skip", "flex_attention", "--skip", "sdpa", "dense", "minference_flex[shipped] random"])
    assert args.skip == ["flex_attention", "sdpa", "dense", "minference_flex[shipped] random"]
    assert bench_e2e.modes_to_run(["shipped"], args.skip) == ["minference_flex[shipped] structured"]
    assert bench_e2e.modes_to_run(["shipped", "searched"], ["minference_flex[shipped]"]) == [
        "sdpa", "flex_attention", "dense", "minference_flex[searched] random", "minference_flex[searched] structured"]


def test_prefill_through_generate_runs_the_same_chunks_as_the_loop(monkeypatch):
    """bench_e2e's --generate pre-fills through model.generate(prefill_chunk_size=N): the same
    chunk lengths as its loop of forwards, on a patched tiny model (CPU; peaks stubbed)."""
    import transformers

    import minference_flex as mf
    from perf import bench_e2e

    monkeypatch.setattr(bench_e2e, "peaks_per_gpu", lambda: [0.0])
    config = tiny_llama_config(vocab_size=64, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                               num_key_value_heads=1, max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    mf.compile(model, min_sparse_len=64)
    ids = torch.randint(0, 64, (1, 200))
    lengths = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                          with_kwargs=True)
    bench_e2e.prefill_once(model, ids, chunk=64)
    loop, lengths[:] = list(lengths), []
    bench_e2e.prefill_once(model, ids, chunk=64, generate=True)
    assert loop == [64, 64, 64, 8] and lengths == loop


def test_real_heads_tile_view_pools_attention_and_the_patterns_tiles():
    from minference_flex.ops import reference
    from minference_flex.patterns.config import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern
    from perf.draw_real_heads import default_heads, pattern_mask, tile_view

    seq_len = random.randrange(300, 500)
    q, k = torch.randn(1, 1, seq_len, 32), torch.randn(1, 1, seq_len, 32)
    scale = 32**-0.5
    mass, computed, recall = tile_view(q, k, reference.causal_mask(seq_len), scale, rows=100)
    tiles = -(-seq_len // 64)
    assert mass.shape == computed.shape == (tiles, tiles)
    assert torch.allclose(mass.sum(1), torch.ones(tiles, dtype=torch.float64))  # each query tile's mean row
    assert abs(recall - 1.0) < 1e-9 and torch.equal(computed, torch.ones(tiles, tiles, dtype=torch.bool).tril())
    a_shape = pattern_mask(HeadPattern(A_SHAPE, 4, 64), q, k, scale)
    _, computed, recall = tile_view(q, k, a_shape, scale)
    assert 0 < recall < 1 and computed.sum() < tiles * (tiles + 1) // 2
    for pattern in (HeadPattern(VERTICAL_SLASH, 30, 64), HeadPattern(BLOCK_SPARSE, 0, 0)):
        assert pattern_mask(pattern, q, k, scale).shape == (seq_len, seq_len)
    config = [[HeadPattern(A_SHAPE, 1, 2)] * 3, [HeadPattern(VERTICAL_SLASH, 1, 2), HeadPattern(BLOCK_SPARSE, 0, 0),
                                                  HeadPattern(A_SHAPE, 1, 2)]]
    assert default_heads(config) == [(0, 0), (1, 0), (1, 1), (1, 2)]  # each kind from the middle layer, then more


def test_search_rules_pick_by_tolerance_and_by_floor(tmp_path):
    import json

    from perf.search_rules import main as rules_main

    # one layer, two heads, three candidates (recall, cost): the cheapest candidate keeps 0.93 / 0.5
    tables = {"seq_len": 4096, "candidates": [["vertical_and_slash", 1000, 6096], ["stream_llm", 64, 512],
                                                ["block_sparse", 0, 0]],
              "candidate_recall": [[[1.0, 0.93, 0.97], [1.0, 0.5, 0.99]]],
              "candidate_cost": [[[1.0, 0.2, 0.6], [1.0, 0.2, 0.6]]]}
    path = tmp_path / "tables.json"
    path.write_text(json.dumps(tables))
    assert rules_main([str(path), "--tolerances", "0.05", "--floors", "0.9", "--write-dir", str(tmp_path)]) == 0
    by_tolerance = json.loads((tmp_path / "tolerance_0.05.json").read_text())[0]
    by_floor = json.loads((tmp_path / "floor_0.9.json").read_text())[0]
    assert [by_tolerance[h][0] for h in "01"] == ["block_sparse", "block_sparse"]
    assert [by_floor[h][0] for h in "01"] == ["stream_llm", "block_sparse"]
