"""Attention recall, the pattern search and its command line (CPU, tiny random models)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

import minference_flex as mf
from tests.models import tiny_llama_config, tiny_model
from custom_ops.vertical_slash import build_vertical_slash_index, computed_fraction
from minference_flex.ops.attention import DENSE_FALLBACK_FRACTION
from minference_flex.ops import reference
from minference_flex.cli.main import main
from minference_flex.patterns.config import A_SHAPE, BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern
from minference_flex.metrics.recall import (
    candidate_scores,
    pattern_cost,
    sample_query_tiles,
    vertical_slash_cost,
)
from minference_flex.patterns import get_pattern
from minference_flex.pattern_search.search import parse_candidate, select_patterns, synthetic_prompt

VS = lambda a, b: HeadPattern(VERTICAL_SLASH, a, b)  # noqa: E731
A = lambda a, b: HeadPattern(A_SHAPE, a, b)  # noqa: E731
BS = HeadPattern(BLOCK_SPARSE, 0, 0)

LLAMA = tiny_llama_config(rope_theta=500000.0)
SMALL = [A(16, 128), VS(30, 100), VS(64, 200), BS]


def _model():
    return tiny_model(LLAMA)


def _reference_recall(q, k, masks, rows, scale):
    """float64 dense causal softmax over the full S x S, mass inside each [B, H, S, S] mask."""
    seq_len = q.shape[2]
    kk = k.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    scores = (q.double() @ kk.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~reference.causal_mask(seq_len), float("-inf")), -1)
    return torch.stack([(probs * m)[:, :, rows].sum(-1).mean(-1) for m in masks], -1)


def test_sample_query_tiles():
    assert sample_query_tiles(700, 64, 32) == list(range(11))
    tiles = sample_query_tiles(100_000, 64, 32)
    assert len(tiles) == 32 and tiles[-1] == math.ceil(100_000 / 64) - 1
    gaps = {b - a for a, b in zip(tiles, tiles[1:])}
    assert max(gaps) - min(gaps) <= 1, "evenly spaced"
    assert tiles == sample_query_tiles(100_000, 64, 32)


def test_recall_matches_float64_reference_for_every_pattern(monkeypatch):
    monkeypatch.setattr(get_pattern(BLOCK_SPARSE), "topk", 5)  # sparse at this length
    batch, heads, kv_heads, seq_len, dim, bs = 2, 4, 2, 700, 32, 16
    q, k = torch.randn(batch, heads, seq_len, dim), torch.randn(batch, kv_heads, seq_len, dim)
    scale = 0.3
    cands = [A(20, 100), VS(40, 130), BS]
    got = candidate_scores(
        q, k, [cands] * heads, scale, block_size=bs, num_tiles=8, with_cost=False
    ).recall
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, 40, 130, 64, scale)
    masks = [
        reference.a_shape_mask(seq_len, 20, 100),
        reference.vertical_slash_mask(v_idx, s_idx, seq_len, bs),
        reference.block_sparse_mask(q, k, 5, bs),
    ]
    rows = torch.cat([torch.arange(m * bs, min((m + 1) * bs, seq_len)) for m in sample_query_tiles(seq_len, bs, 8)])
    want = _reference_recall(q, k, masks, rows, scale)
    assert got.shape == (batch, heads, 3)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    assert (got < 0.99).all(), "budgets this small must miss attention"

    # one pattern per head (a mixed layer), default tiles of 64 and topk through the public function
    monkeypatch.undo()
    mixed = [A(8, 64), VS(30, 100), BS, VS(50, 120)]
    got = mf.attention_recall(q, k, mixed, scale)
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, [30, 30, 30, 50], [100, 100, 100, 120], 64, scale)
    vs = reference.vertical_slash_mask(v_idx, s_idx, seq_len, 64)
    per_head = torch.stack(
        [reference.a_shape_mask(seq_len, 8, 64).expand(batch, -1, -1), vs[:, 1],
         reference.block_sparse_mask(q, k, 100, 64)[:, 2], vs[:, 3]], 1
    )
    want = _reference_recall(q, k, [per_head], torch.arange(seq_len), scale)[..., 0]
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_full_budgets_give_recall_one():
    q, k = torch.randn(1, 4, 333, 16), torch.randn(1, 2, 333, 16)
    full = [VS(333, 333), A(0, 333), A(333, 0), BS]
    torch.testing.assert_close(mf.attention_recall(q, k, full, 0.25), torch.ones(1, 4), rtol=0, atol=1e-5)


def test_a_shape_cost_counts_the_tiles_of_its_mask():
    seq_len, bs = 1000, 64
    nblocks = math.ceil(seq_len / bs)
    for init, local in [(100, 800), (0, 64), (64, 1), (130, 200), (5, 0)]:
        mask = torch.zeros(nblocks * bs, nblocks * bs, dtype=torch.bool)
        mask[:seq_len, :seq_len] = reference.a_shape_mask(seq_len, init, local)
        tiles = mask.view(nblocks, bs, nblocks, bs).any(3).any(1).sum().item()
        assert pattern_cost(A(init, local), seq_len, bs) == pytest.approx(tiles / (nblocks * (nblocks + 1) / 2))


@pytest.mark.parametrize(
    "seq_len, budgets", [(8192, (500, 100)), (8192, (300, 120)), (16384, (1000, 150)), (16384, (30, 200))]
)
def test_vertical_slash_cost_tracks_the_kernel_index_on_random_inputs(seq_len, budgets):
    """`pattern_cost` is an expectation over randomly placed offsets and columns, so it is
    compared with the kernel-exact fraction averaged over draws: with few scattered offsets
    one draw alone varies by about +-10% ((300, 120) at 8K: 0.204-0.248 over 12 seeds, the
    model 0.238)."""
    reals = []
    for _ in range(8):
        q, k = torch.randn(1, 2, seq_len, 64), torch.randn(1, 2, seq_len, 64)
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, *budgets)
        reals.append(computed_fraction(build_vertical_slash_index(v_idx, s_idx, seq_len, 64), 64).item())
    assert pattern_cost(VS(*budgets), seq_len) == pytest.approx(sum(reals) / len(reals), rel=0.15)


def test_cost_order_and_limits():
    assert pattern_cost(BS, 64 * 101) == 1.0 and pattern_cost(BS, 64 * 300) < 0.6
    assert pattern_cost(VS(1000, 6096), 32768) == 1.0, "past DENSE_FALLBACK_FRACTION the op runs dense"
    assert pattern_cost(VS(3500, 100), 131072) < pattern_cost(VS(30, 800), 131072) < 1.0
    assert pattern_cost(A(128, 4096), 131072) < pattern_cost(A(128, 8192), 131072)


def _band_and_sinks(seq_len, tau=8.0, sink_logit=1.0, dim=8, seed=0):
    """q, k [1, 1, S, dim] of a head that attends a local band and 4 sink keys (scale 1):
    score(i, j) = j / tau, plus i / tau + sink_logit for j < 4, so the causal softmax decays as
    exp(-(i - j) / tau) back from the diagonal and each sink weighs exp(sink_logit) x the
    diagonal key; small random dims add noise."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.arange(seq_len, dtype=torch.float32)
    q, k = torch.zeros(1, 1, seq_len, dim), torch.zeros(1, 1, seq_len, dim)
    q[0, 0, :, 0] = 1.0
    k[0, 0, :, 0] = pos / tau
    q[0, 0, :, 1] = pos / tau + sink_logit
    k[0, 0, :4, 1] = 1.0
    q[0, 0, :, 2:] = torch.randn(seq_len, dim - 2, generator=gen) * 0.3
    k[0, 0, :, 2:] = torch.randn(seq_len, dim - 2, generator=gen) * 0.3
    return q, k


def test_vertical_slash_cost_is_computed_fraction_of_each_heads_real_index():
    batch, heads, kv_heads, seq_len, dim, bs = 2, 4, 2, 2048, 16, 64
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(batch, heads, seq_len, dim, generator=gen)
    k = torch.randn(batch, kv_heads, seq_len, dim, generator=gen)
    band_q, band_k = _band_and_sinks(seq_len, dim=dim)
    q[1, 2:], k[1, 1:] = band_q[0, 0], band_k[0, 0]  # batch 1, KV head 1: structured heads
    scale = 1.0
    cands = [VS(30, 100), A(16, 256), VS(30, 300), BS, VS(200, 100), VS(1000, 700)]
    # the cost does not depend on the sampled tiles: sample few, to keep the test fast
    recall, cost = candidate_scores(q, k, [cands] * heads, scale, block_size=bs, num_tiles=2)
    assert recall.shape == cost.shape == (batch, heads, len(cands))
    no_cost = candidate_scores(q, k, [cands] * heads, scale, block_size=bs, num_tiles=2, with_cost=False)
    assert no_cost.cost is None and torch.equal(recall, no_cost.recall)
    below = above = 0
    for c, cand in enumerate(cands):
        if cand.kind != VERTICAL_SLASH:
            assert (cost[..., c] == pattern_cost(cand, seq_len, bs)).all()
            continue
        v_idx, s_idx = mf.estimate_vertical_slash(q, k, cand.a, cand.b, 64, scale)
        for b in range(batch):
            for h in range(heads):
                index = build_vertical_slash_index(v_idx[b : b + 1, h : h + 1], s_idx[b : b + 1, h : h + 1], seq_len, bs)
                frac = computed_fraction(index, bs).item()
                want = 1.0 if frac > DENSE_FALLBACK_FRACTION else frac
                assert cost[b, h, c].item() == pytest.approx(want, rel=1e-6, abs=0), (cand, b, h, frac)
                below += frac <= DENSE_FALLBACK_FRACTION
                above += frac > DENSE_FALLBACK_FRACTION
        torch.testing.assert_close(
            cost[..., c], vertical_slash_cost(v_idx, s_idx, seq_len, bs), rtol=0, atol=0
        )
    assert below and above, "both sides of the dense fallback are exercised"
    # per head: the structured heads of batch 1 are far cheaper than the random ones
    assert (cost[1, 2:, 2] < 0.5 * cost[0, :, 2].min()).all(), cost[..., 2]
    # a mixed slot: heads of other patterns keep their analytical cost, VS heads their own
    mixed = [[VS(30, 300)], [A(16, 256)], [VS(30, 300)], [BS]]
    got = candidate_scores(q, k, mixed, scale, block_size=bs, num_tiles=1).cost[..., 0]
    assert torch.equal(got[:, [0, 2]], cost[:, [0, 2], 2])
    assert (got[:, 1] == pattern_cost(A(16, 256), seq_len, bs)).all()
    assert (got[:, 3] == pattern_cost(BS, seq_len, bs)).all()


def test_planted_band_and_sinks_head_picks_the_vertical_slash_whose_real_index_is_cheaper():
    """Equal recall, opposite cost orders. On a local band + sinks head the estimator's extra
    slashes go to the sink diagonals (offsets near S, live only in the last tiles) and the band
    run 0..99, whose last chunk has room: (30, 160) computes no more than (30, 100). The extra
    columns of (1000, 100) are the keys just before the end, which the last ~16 query tiles all
    compute. The analytical proxy spreads both over the sequence and charges bs distances per
    extra offset, so it ranks (1000, 100) far cheaper."""
    seq_len = 8192
    q, k = _band_and_sinks(seq_len)
    many_columns, many_slashes = VS(1000, 100), VS(30, 160)
    cands = [many_columns, many_slashes]
    recall, cost = candidate_scores(q, k, [cands], 1.0)
    recall, cost = recall[0], cost[0]
    proxy = [pattern_cost(c, seq_len) for c in cands]

    assert recall.min() > 0.9999 and abs(recall[0, 0] - recall[0, 1]) < 1e-5, recall
    assert proxy[0] < 0.5 * proxy[1], proxy  # the proxy: many_columns is the cheap one
    assert cost[0, 1] < 0.8 * cost[0, 0] and cost.max() < DENSE_FALLBACK_FRACTION, cost  # really
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, 30, 160, 64, 1.0)
    assert (s_idx[s_idx >= 100] > seq_len - 64 - 4).all(), "extra slashes on the sink diagonals"
    base = vertical_slash_cost(*mf.estimate_vertical_slash(q, k, 30, 100, 64, 1.0), seq_len)
    assert cost[0, 1] < base[0, 0] * 1.01

    assert select_patterns(recall, cost, 0.02) == [1]
    assert select_patterns(recall, proxy, 0.02) == [0], "the proxy would pick the other"


def test_planted_local_columnar_and_block_heads_get_their_patterns():
    seq_len, dim, bs = 8192, 64, 64  # above 100 tiles of 64, so block-sparse is sparse
    scale = dim**-0.5
    q, k = torch.randn(1, 3, seq_len, dim) * 0.3, torch.randn(1, 3, seq_len, dim) * 0.3
    # head 0: scores grow with the key position, so the causal softmax decays ~150 tokens back
    q[0, 0, :, 0] = 1.0
    k[0, 0, :, 0] = torch.arange(seq_len) / (150 * scale)
    # head 1: every query looks at 100 scattered key columns; key 0 is one of them (a sink, as
    # in real heads), so no early row is left before its first column with diffuse attention
    look = torch.randn(dim)
    look = look / look.norm() * math.sqrt(14 / scale)
    q[0, 1] += look
    k[0, 1, torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(seq_len - 1)[:99]])] += look
    # head 2: each tile has one of 16 topics; queries look at the earlier tiles of theirs
    topic = torch.randint(0, 16, (seq_len // bs,)).repeat_interleave(bs)
    basis = torch.eye(dim)[:16] * math.sqrt(14 / scale)
    q[0, 2] += basis[topic]
    k[0, 2] += basis[topic]
    cands = [A(64, 1024), VS(1024, 100), BS]
    recall, cost = candidate_scores(q, k, [cands] * 3, scale)
    recall, cost = recall[0], cost[0]
    chosen = select_patterns(recall, cost, 0.02)
    assert [cands[c].kind for c in chosen] == [A_SHAPE, VERTICAL_SLASH, BLOCK_SPARSE], (recall, cost)
    assert select_patterns(recall, [pattern_cost(c, seq_len) for c in cands], 0.02) == chosen
    assert recall.diagonal().min() > 0.98 and recall.max(1).values.min() > 0.98


def test_select_patterns_rule():
    recall = torch.tensor([[0.99, 0.985, 0.90], [0.99, 0.95, 0.90], [0.5, 0.5, 0.5]])
    costs = [0.9, 0.3, 0.1]
    assert select_patterns(recall, costs, 0.02) == [1, 0, 2]
    assert select_patterns(recall, costs, 0.0) == [0, 0, 2]
    assert select_patterns(recall, [1.0, 1.0, 1.0], 0.2) == [0, 0, 0], "equal cost: the higher recall"
    per_head = torch.tensor([[0.9, 0.3, 0.1], [0.2, 0.3, 0.1], [0.5, 0.5, 0.6]])
    assert select_patterns(recall, per_head, 0.02) == [1, 0, 0], "each head by its own costs"
    with pytest.raises(ValueError, match=r"costs \[H, C\] or \[C\]"):
        select_patterns(recall, [0.1, 0.2], 0.02)


def test_search_config_validates_compiles_and_is_deterministic(tmp_path, capsys):
    model = _model()
    result = mf.search(model, length=1024, candidates=SMALL, tolerance=0.3, seed=3)
    assert model.config._attn_implementation == "sdpa"
    err = capsys.readouterr().err
    assert "layer 2/2 done" in err and "left" in err and "mean recall" in err
    assert len(result.config) == 2 and all(len(layer) == 4 for layer in result.config)
    assert all(0 < r <= 1.0 + 1e-6 for layer in result.recall for r in layer)
    best = [[max(row) for row in layer] for layer in result.candidate_recall]
    assert all(r >= b - 0.3 for lr, lb in zip(result.recall, best) for r, b in zip(lr, lb))
    # costs per layer, head and candidate; the chosen one's is the cheapest within tolerance
    cost = torch.tensor(result.candidate_cost)
    assert cost.shape == (2, 4, len(SMALL))
    for c, cand in enumerate(SMALL):
        if cand.kind == VERTICAL_SLASH:
            assert ((cost[..., c] > 0) & (cost[..., c] <= 1)).all()
        else:
            assert (cost[..., c] == pattern_cost(cand, 1024)).all()
    for layer, pats in enumerate(result.config):
        for h, pat in enumerate(pats):
            c = SMALL.index(pat)
            assert result.cost[layer][h] == result.candidate_cost[layer][h][c]
            ok = [d for d, r in enumerate(result.candidate_recall[layer][h]) if r >= best[layer][h] - 0.3]
            assert result.cost[layer][h] == min(result.candidate_cost[layer][h][d] for d in ok)
    assert result.mean_candidate_cost() == pytest.approx(cost.double().mean((0, 1)).tolist())
    assert "mean cost" in err
    path = tmp_path / "patterns.json"
    result.save(path)
    loaded = mf.load_pattern_config(str(path), 2, 4)
    assert loaded == result.config
    assert json.loads(path.read_text())[0]["0"][3] == pytest.approx(result.recall[0][0], abs=1e-6)

    again = mf.search(_model(), length=1024, candidates=SMALL, tolerance=0.3, seed=3, progress=False)
    assert again.config == result.config and again.candidate_recall == result.candidate_recall
    assert again.candidate_cost == result.candidate_cost
    assert not torch.equal(synthetic_prompt(128, 1024, 3), synthetic_prompt(128, 1024, 4))

    ids = torch.randint(1, 128, (1, 400))
    with torch.no_grad():
        dense = model(ids).logits
        mf.compile(model, pattern_config=str(path), min_sparse_len=256)
        sparse = model(ids).logits
    assert torch.isfinite(sparse).all() and sparse.shape == dense.shape


def test_calibration_inputs(tmp_path):
    model = _model()
    ids = torch.randint(0, 128, (700,))
    by_list = mf.search(model, ids.tolist(), length=600, candidates=SMALL, progress=False)
    by_tensor = mf.search(model, ids[None], length=600, candidates=SMALL, progress=False)
    assert by_list.seq_len == 600 and by_list.candidate_recall == by_tensor.candidate_recall
    text = tmp_path / "prompt.txt"
    text.write_text("some calibration text " * 50)
    with pytest.raises(ValueError, match="no tokenizer"):
        mf.search(model, str(text), candidates=SMALL, progress=False)

    def tokenizer(s, add_special_tokens=True):
        return {"input_ids": [ord(c) % 128 for c in s]}

    result = mf.search(model, str(text), candidates=SMALL, tokenizer=tokenizer, progress=False)
    assert result.seq_len == len(text.read_text())
    with pytest.raises(ValueError, match="fewer than length=5000"):
        mf.search(model, ids, length=5000, progress=False)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 128\)"):
        mf.search(model, [1, 2, 999], progress=False)


def test_search_rejects_bad_options_and_restores_attention_on_error(monkeypatch):
    model = _model()
    with pytest.raises(TypeError, match="candidates must be a non-empty list"):
        mf.search(model, candidates=[], progress=False)
    with pytest.raises(ValueError, match="unknown pattern 'diagonal'"):
        mf.search(model, candidates=[("diagonal", 1, 2)], progress=False)
    with pytest.raises(ValueError, match="tolerance must be"):
        mf.search(model, tolerance=1.5, progress=False)
    with pytest.raises(ValueError, match="length must be"):
        mf.search(model, length=0, progress=False)
    with pytest.raises(ValueError, match="3 tokens, too few to judge a pattern"):
        mf.search(model, [5, 6, 7], progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("scoring failed")

    # the module, not the function `minference_flex.pattern_search.search` that shadows its name
    monkeypatch.setattr(sys.modules["minference_flex.pattern_search.search"], "candidate_scores", broken)
    with pytest.raises(RuntimeError, match="scoring failed"):
        mf.search(model, length=256, progress=False)
    assert model.config._attn_implementation == "sdpa"


def test_parse_candidate():
    assert parse_candidate("vs:1000,6096") == VS(1000, 6096)
    assert parse_candidate("a:128, 4096") == A(128, 4096)
    assert parse_candidate("stream_llm:4,64") == A(4, 64)
    assert parse_candidate("bs") == BS
    for bad in ["vs:10", "vs", "xx:1,2", "bs:1,2", "a:0,0", "vs:-1,5"]:
        with pytest.raises(ValueError):
            parse_candidate(bad)


def test_cli_search_end_to_end(tmp_path, capsys):
    _model().save_pretrained(tmp_path / "model")
    out = tmp_path / "patterns.json"
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(torch.randint(0, 128, (800,)).tolist()))
    argv = ["search", "--model", str(tmp_path / "model"), "--out", str(out), "--length", "512",
            "--calibration", str(ids), "--budget", "a:16,128", "--budget", "vs:30,100", "--budget", "bs",
            "--device", "cpu", "--quiet", "--tables", str(tmp_path / "tables.json")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "layer 1:" in printed and "mean recall" in printed and str(out) in printed
    config = mf.load_pattern_config(str(out), 2, 4)
    assert {p for layer in config for p in layer} <= {A(16, 128), VS(30, 100), BS}
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert [mf.HeadPattern(*p) for p in tables["candidates"]] == [A(16, 128), VS(30, 100), BS]
    assert [[mf.HeadPattern(*p) for p in layer] for layer in tables["config"]] == config
    assert tables["seq_len"] == 512 and len(tables["candidate_recall"][1][3]) == 3


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "{tmp}/missing"], "--model"),
        (["--length", "0"], "--length must be >= 1"),
        (["--budget", "vs:10"], "--budget"),
        (["--budget", "diagonal:1,2"], "--budget"),
        (["--out", "{tmp}/no/such/dir/out.json"], "--out"),
        (["--tolerance", "2"], "--tolerance"),
        (["--calibration", "{tmp}/none.txt"], "--calibration"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, args, words):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # never loaded: arguments are checked first
    base = {"--model": str(model_dir), "--out": str(tmp_path / "out.json")}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for flag, value in base.items():
        if flag not in args:
            args = [flag, value] + args
    with pytest.raises(SystemExit) as exc:
        main(["search", *args])
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def test_cli_requires_model_and_out(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--out", "x.json"])
    assert "--model" in capsys.readouterr().err


def test_summary_warns_about_heads_that_no_candidate_covers():
    from minference_flex.pattern_search.search import LOW_RECALL, SearchResult

    pattern = HeadPattern(VERTICAL_SLASH, 30, 100)
    recall = [[0.99, LOW_RECALL - 0.1], [0.97, 0.96]]
    result = SearchResult(
        config=[[pattern, pattern], [pattern, pattern]], recall=recall, cost=[[0.1, 0.2], [0.3, 0.4]],
        candidates=[pattern], candidate_recall=[[[r] for r in layer] for layer in recall],
        candidate_cost=[[[0.1], [0.2]], [[0.3], [0.4]]], seq_len=4096, seconds=1.0, layer_seconds=[0.5, 0.5],
    )
    assert result.low_recall_heads() == [(0, 1)]
    assert result.low_recall_heads(0.98) == [(0, 1), (1, 0), (1, 1)]
    assert "warning: 1 heads keep less than 95%" in result.summary()
    recall[0][1] = 0.99
    assert "warning" not in result.summary()


def test_search_names_a_model_folder_it_cannot_load(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(SystemExit):
        main(["search", "--model", str(folder), "--out", str(tmp_path / "c.json"), "--device", "cpu"])
    assert f"--model {folder}: cannot load it" in capsys.readouterr().err
