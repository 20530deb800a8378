"""The accuracy table on a tiny random Llama (CPU): the methods, their tile fractions, chunked
pre-fill, the needle-in-a-haystack sweep and the command line."""

from __future__ import annotations

import json
import random

import pytest
import transformers

from minference_flex.patch import hf
from minference_flex.patterns.config import BLOCK_SPARSE, VERTICAL_SLASH, HeadPattern, load_pattern_config
from minference_flex.evaluation.evaluate import (
    EVERY_HEAD,
    METHODS,
    EvalSpec,
    Item,
    build_niah,
    build_table,
    method_runs,
    run_items,
    work_items,
)
from minference_flex.retrieval.model import answer
from minference_flex.retrieval.tasks import TOKENIZER, make_sample
from minference_flex.metrics.tile_count import causal_tiles
from tests.models import tiny_llama_config  # noqa: E402

HEADS, LAYERS = 4, 2
SEARCHED = [{"0": ["vertical_and_slash", 30, 100, 0], "1": ["vertical_and_slash", 30, 200, 0],
             "2": ["block_sparse", 0, 0, 0], "3": ["stream_llm", 4, 64, 0]}] * LAYERS


def _tiny_retrieval_llama():
    """A random model over the tasks' vocabulary that never stops early (no EOS)."""
    config = tiny_llama_config(
        vocab_size=len(TOKENIZER), hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, bos_token_id=TOKENIZER.bos_id, eos_token_id=None, pad_token_id=TOKENIZER.pad_id,
    )
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.fixture
def searched(tmp_path):
    path = tmp_path / "searched.json"
    path.write_text(json.dumps(SEARCHED))
    return str(path)


@pytest.fixture
def sparse_calls(monkeypatch):
    """(q_len, kv_len) of every call that went to the sparse patterns."""
    calls = []
    real = hf.sparse_prefill
    monkeypatch.setattr(hf, "sparse_prefill", lambda q, k, *a, **kw: calls.append((q.shape[2], k.shape[2]))
                        or real(q, k, *a, **kw))
    return calls


def test_methods_run_the_issue_patterns_in_order(searched):
    assert list(METHODS) == ["dense", "searched", "searched-chunked", "default", "vs-30-800", "bs-100", "a-shape"]
    assert [METHODS[k] for k in EVERY_HEAD] == ["VS (1000, 6096)", "VS (30, 800)", "BS (top 100)",
                                                "A-shape (128, 4096)"]
    model = _tiny_retrieval_llama()
    chunk = random.randrange(64, 4096)
    runs = method_runs(model, searched, tuple(METHODS), chunk)
    assert list(runs) == list(METHODS.values())
    config = load_pattern_config(searched, LAYERS, HEADS)
    assert runs[METHODS["searched"]] == (config, None) and runs[METHODS["searched-chunked"]] == (config, chunk)
    assert runs["dense"] == (None, None)
    assert runs["VS (30, 800)"].config == [[HeadPattern(VERTICAL_SLASH, 30, 800)] * HEADS] * LAYERS
    assert runs["BS (top 100)"].config == [[HeadPattern(BLOCK_SPARSE, 0, 0)] * HEADS] * LAYERS
    assert list(method_runs(model, None, tuple(METHODS), chunk)) == ["dense", *list(METHODS.values())[3:]]


def test_run_items_answers_every_method_and_counts_its_tiles(searched, sparse_calls):
    model = _tiny_retrieval_llama()
    length, chunk = 384, 128
    runs = method_runs(model, searched, tuple(METHODS), chunk)
    items = [Item("passkey", random.randrange(5)), Item("needle", random.randrange(5), random.choice([0, 50, 100]))]
    records = run_items(model, length, items, runs, recall=False)
    assert [(r["task"], r["sample"], r["depth"]) for r in records] == [tuple(it) for it in items]
    assert (chunk, 2 * chunk) in sparse_calls and (chunk, 3 * chunk) in sparse_calls, "chunks go sparse"
    for record, task in zip(records, ("passkey", "needle")):
        assert set(record["hits"]) == set(runs)
        assert set(record["tiles"]) == set(runs) - {"dense"}
        # the pre-fill's causal tiles, chunked or not, and one dense decode step per answer token but the last
        steps = len(make_sample(task, length, 0).answer) - 1
        causal = LAYERS * HEADS * (causal_tiles(length, length)
                                   + sum(causal_tiles(1, length + i) for i in range(1, steps + 1)))
        # (vertical-slash may compute more tiles than dense on short prompts: (30, 100) does here)
        assert all(total == causal and computed > 0 for computed, total in record["tiles"].values())
        # block-sparse top 100 and A-shape (128, 4096) keep every tile of 384 tokens
        assert record["tiles"]["BS (top 100)"] == record["tiles"]["A-shape (128, 4096)"] == [causal, causal]


def test_a_prompt_within_one_chunk_is_answered_as_unchunked(searched, sparse_calls):
    model = _tiny_retrieval_llama()
    length = random.randrange(256, 400)
    runs = method_runs(model, searched, ("searched", "searched-chunked"), chunk=length)
    records = run_items(model, length, [Item("multikey", random.randrange(100))], runs, recall=False)
    assert records[0]["tiles"][METHODS["searched"]] == records[0]["tiles"][METHODS["searched-chunked"]]
    assert records[0]["hits"][METHODS["searched"]] == records[0]["hits"][METHODS["searched-chunked"]]
    assert set(sparse_calls) == {(length, length)}
    sample = make_sample("kv", length, random.randrange(100))
    hf.compile(model, searched, min_sparse_len=256)
    try:
        assert answer(model, sample, chunk=length) == answer(model, sample)
        with pytest.raises(ValueError, match="chunk must be a positive int"):
            answer(model, sample, chunk=0)
    finally:
        hf.restore(model)


def _record(length, task, sample, depth, hit, tiles):
    return {"S": length, "task": task, "sample": sample, "depth": depth, "recall": None,
            "hits": {"dense": True, "VS (30, 800)": hit}, "tiles": {"VS (30, 800)": tiles}}


def test_table_and_sweep_sum_tiles_over_their_cells():
    spec = EvalSpec((256, 512), ("passkey",), 2, ("dense", "vs-30-800"), niah_depths=(0, 100), niah_samples=2)
    methods = ["dense", "VS (30, 800)"]
    tiles = {key: [random.randrange(1, 50), random.randrange(50, 100)] for key in range(12)}
    records = [_record(n, "passkey", i, None, i == 0, tiles[2 * j + i]) for j, n in enumerate((256, 512))
               for i in range(2)]
    records += [_record(n, "needle", i, d, d == 0, tiles[4 + 4 * j + 2 * (d == 100) + i])
                for j, n in enumerate((256, 512)) for d in (0, 100) for i in range(2)]
    random.shuffle(records)
    rows, _ = build_table(records, spec, methods)
    def summed(a, b):
        return (tiles[a][0] + tiles[b][0]) / (tiles[a][1] + tiles[b][1])

    assert [(r["S"], r["method"], r["accuracy"], r["tile_fraction"]) for r in rows] == [
        (256, "dense", 100.0, 1.0), (256, "VS (30, 800)", 50.0, summed(0, 1)),
        (512, "dense", 100.0, 1.0), (512, "VS (30, 800)", 50.0, summed(2, 3))]
    niah = build_niah(records, spec, methods)
    assert [(c["S"], c["depth"], c["method"], c["accuracy"], c["samples"]) for c in niah] == [
        (n, d, m, 100.0 if m == "dense" or d == 0 else 0.0, 2) for n in (256, 512) for d in (0, 100) for m in methods]
    assert niah[-1]["tile_fraction"] == summed(10, 11)
    assert len(work_items(spec, 256)) == 2 + 2 * 2


def test_eval_spec_rejects_bad_sweeps_and_chunks():
    with pytest.raises(ValueError, match="niah_depths must be distinct ints in 0..100"):
        EvalSpec(niah_depths=(0, 110))
    with pytest.raises(ValueError, match="niah_samples must be an int >= 1"):
        EvalSpec(niah_depths=(50,), niah_samples=0)
    with pytest.raises(ValueError, match="chunk must be an int >= 64 tokens"):
        EvalSpec(chunk=8)


def test_eval_command_writes_the_table_with_tile_fractions_and_the_sweep(tmp_path, searched, capsys):
    """`python -m minference_flex eval` (run in process) writes the table and the sweep, and
    names bad options."""
    from minference_flex.cli.main import main as cli

    model_dir = tmp_path / "model"
    _tiny_retrieval_llama().save_pretrained(model_dir)
    out = tmp_path / "accuracy.json"
    args = ["--model", str(model_dir), "--searched", searched, "--lengths", "256", "--tasks", "passkey",
            "--samples", "1", "--methods", "dense", "searched-chunked", "a-shape", "--chunk", "128",
            "--no-recall", "--device", "cpu", "--out", str(out)]
    assert cli(["eval", *args, "--niah-depths", "0", "100", "--niah-samples", "1"]) == 0
    written = json.loads(out.read_text())
    names = ["dense", METHODS["searched-chunked"], METHODS["a-shape"]]
    assert [r["method"] for r in written["rows"]] == names
    assert written["rows"][0]["tile_fraction"] == 1.0 and all(r["tile_fraction"] > 0 for r in written["rows"])
    assert [(c["depth"], c["method"]) for c in written["niah"]] == [(d, m) for d in (0, 100) for m in names]
    assert "NIAH S=256 depth 100%" in capsys.readouterr().out
    for bad, message in ((["--niah-depths", "0", "120"], "--niah-depths must be distinct ints in 0..100 (percent)"),
                         (["--chunk", "8"], "--chunk must be an int >= 64 tokens"),
                         (["--model", str(tmp_path)], "no saved model there (config.json missing)")):
        with pytest.raises(SystemExit):
            cli(["eval", *args, *bad])
        assert message in capsys.readouterr().err
