"""Training on CPU (fp32): parameter gradients through a patched tiny Hugging Face model, and
the training script's checkpoints (resumed runs, optimizer shards)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

import minference_flex as mf
from tests.models import tiny_llama_config
from minference_flex.retrieval import checkpoint
from minference_flex.retrieval.train import PRESETS, build_model, main as train_main

HEADS, KV_HEADS, LAYERS, SEQ = 4, 2, 2, 390
CONFIG = tiny_llama_config(num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS)


def _model(**overrides):
    torch.manual_seed(0)
    config = copy.deepcopy(CONFIG)
    for name, value in overrides.items():
        setattr(config, name, value)
    return transformers.AutoModelForCausalLM.from_config(config).train()


def _layers(*heads):
    """One layer config, the given [pattern, a, b] per head, for every layer."""
    return [{str(h): [*p, 0] for h, p in enumerate(heads)} for _ in range(LAYERS)]


FULL = {  # budgets that cover every causal key at SEQ tokens
    "vertical_slash": _layers(*[["vertical_and_slash", 10**6, 10**6]] * HEADS),
    "a_shape": _layers(*[["stream_llm", 0, 10**6]] * HEADS),
    "block_sparse": _layers(*[["block_sparse", 0, 0]] * HEADS),  # top 100 of 7 tiles
    "mixed": _layers(["vertical_and_slash", 10**6, 10**6], ["stream_llm", 3, 10**6],
                     ["block_sparse", 0, 0], ["vertical_and_slash", 10**6, 10**6]),
}
SMALL = {
    "vertical_slash": _layers(["vertical_and_slash", 30, 100], ["vertical_and_slash", 60, 120],
                              ["vertical_and_slash", 30, 100], ["vertical_and_slash", 40, 150]),
    "flex": _layers(["stream_llm", 4, 64], ["block_sparse", 0, 0], ["stream_llm", 16, 128], ["block_sparse", 0, 0]),
    "mixed": _layers(["vertical_and_slash", 30, 100], ["vertical_and_slash", 60, 120],
                     ["stream_llm", 4, 64], ["block_sparse", 0, 0]),
}


def _grads(model, ids, runner=None):
    """(loss, parameter gradients by name) of one step of `runner` (default: model itself,
    else e.g. its torch.compile wrapper)."""
    model.zero_grad(set_to_none=True)
    loss = (model if runner is None else runner)(ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _max_rel_diff(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-12)).item() for n in b)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FULL))
def test_full_budgets_give_the_unpatched_gradients(name):
    model = _model()
    ids = torch.randint(1, 128, (2, SEQ))
    loss, dense = _grads(model, ids)
    mf.compile(model, FULL[name], min_sparse_len=256, dense_fallback=False)
    calls = _count_sparse_calls(model)
    patched_loss, patched = _grads(model, ids)
    assert calls[0] == LAYERS, "the sparse path was not taken"
    torch.testing.assert_close(patched_loss, loss, rtol=1e-5, atol=1e-5)
    assert _max_rel_diff(patched, dense) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_small_budgets_change_the_gradients_and_keep_them_finite(name):
    model = _model()
    ids = torch.randint(1, 128, (1, SEQ))
    _, dense = _grads(model, ids)
    mf.compile(model, SMALL[name], min_sparse_len=256, dense_fallback=False)
    _, sparse = _grads(model, ids)
    assert all(torch.isfinite(g).all() for g in sparse.values())
    assert _max_rel_diff(sparse, dense) > 1e-3, "small budgets must change the gradients (sparse path taken)"
    # sparse_training=False: the same model trains dense again
    mf.compile(model, SMALL[name], min_sparse_len=256, sparse_training=False)
    _, dense_again = _grads(model, ids)
    assert _max_rel_diff(dense_again, dense) < 1e-5


def _count_sparse_calls(model):
    """Count sparse_prefill calls (one per layer per forward) through a wrapper."""
    from minference_flex.patch import hf

    calls = [0]
    real = hf.sparse_prefill

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    hf.sparse_prefill = counting
    return calls


@pytest.fixture(autouse=True)
def _restore_wrapper():
    """Undo `_count_sparse_calls` after each test."""
    from minference_flex.patch import hf

    real = hf.sparse_prefill
    yield
    hf.sparse_prefill = real


@pytest.mark.slow
def test_eval_and_no_grad_forwards_are_unchanged_by_sparse_training():
    model = _model().eval()
    ids = torch.randint(1, 128, (1, SEQ))
    mf.compile(model, SMALL["mixed"], min_sparse_len=256)
    with torch.no_grad():
        on = model(ids).logits
    mf.compile(model, SMALL["mixed"], min_sparse_len=256, sparse_training=False)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, on, rtol=0, atol=0)


def test_dropout_in_training_is_a_clear_error():
    model = _model(attention_dropout=0.1)
    mf.compile(model, SMALL["mixed"], min_sparse_len=256)
    ids = torch.randint(1, 128, (1, SEQ))
    with pytest.raises(ValueError, match="attention_dropout"):
        model(ids, labels=ids)
    model.eval()  # dropout is off in eval mode: no error
    with torch.no_grad():
        model(ids)


def test_bad_sparse_training_option_is_named():
    with pytest.raises(TypeError, match="sparse_training"):
        mf.compile(_model(), SMALL["mixed"], sparse_training="yes")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixed"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    model = _model()
    mf.compile(model, SMALL[name], min_sparse_len=256)
    ids = torch.randint(1, 128, (1, SEQ))
    _, plain = _grads(model, ids)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    _, checkpointed = _grads(model, ids)
    assert _max_rel_diff(checkpointed, plain) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vertical_slash", "mixed"])
def test_compiled_training_step_gives_the_eager_gradients_without_recompiling(name):
    """torch.compile(model) (fullgraph: no graph break anywhere in the forward, attention
    included) runs forward, loss and backward with the eager gradients; a second step at the
    same length with other tokens compiles nothing new."""
    torch._dynamo.reset()  # earlier tests' lengths would make this length dynamic
    model = _model()
    mf.compile(model, SMALL[name], min_sparse_len=256, dense_fallback=False)
    ids = torch.randint(1, 128, (1, SEQ))
    _, eager = _grads(model, ids)
    compiled = torch.compile(model, fullgraph=True)
    _, got = _grads(model, ids, compiled)
    assert _max_rel_diff(got, eager) < 1e-4
    before = dict(torch._dynamo.utils.counters["stats"])
    _grads(model, torch.randint(1, 128, (1, SEQ)), compiled)
    assert dict(torch._dynamo.utils.counters["stats"]) == before, "the second step recompiled"


@pytest.mark.slow
def test_padded_batch_trains_like_the_unpatched_model():
    """A left-padded batch (each row's real tokens run alone) with full budgets: the loss on
    the real tokens gives the unpatched model's parameter gradients."""
    model = _model()
    ids = torch.randint(1, 128, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :50] = 0
    labels = ids.masked_fill(mask == 0, -100)

    def step():
        model.zero_grad(set_to_none=True)
        model(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    dense = step()
    mf.compile(model, FULL["mixed"], min_sparse_len=256, dense_fallback=False)
    calls = _count_sparse_calls(model)
    patched = step()
    assert calls[0] == 2 * LAYERS, "each row of each layer runs sparse"
    assert _max_rel_diff(patched, dense) < 1e-4


SCHEDULE = ["--preset", "smoke", "--stages", "128:6:2", "192:4:2", "--tasks", "passkey", "needle"]
EVALS = ["--eval-every", "5", "--eval-samples", "1"]


def _log(path) -> dict:
    return json.loads((path / checkpoint.LOG_FILE).read_text())


def _state(path) -> dict:
    return json.loads((path / checkpoint.STATE_FILE).read_text())


def test_resumed_runs_end_with_the_weights_of_one_run(tmp_path):
    """10 steps in one call, and in three resumed calls (4 steps, 4 steps across the stage
    boundary, the rest into the same directory): the same weights bit for bit, the same losses
    and evals, one log over all calls."""
    one, first, rest = tmp_path / "one", tmp_path / "first", tmp_path / "rest"
    train_main(["--out", str(one), *SCHEDULE, *EVALS])
    train_main(["--out", str(first), *SCHEDULE, *EVALS, "--max-steps", "4"])
    assert _state(first)["progress"] == {"step": 4, "stage": 0, "stage_step": 4} and not _state(first)["done"]
    assert (first / "optimizer-00.pt").exists()
    train_main(["--out", str(rest), "--resume", str(first), *EVALS, "--max-steps", "4"])
    assert _state(rest)["progress"] == {"step": 8, "stage": 1, "stage_step": 2}
    train_main(["--out", str(rest), "--resume", str(rest), *EVALS])
    assert _state(rest)["done"] and not list(rest.glob("optimizer-*.pt")), "a finished schedule keeps no optimizer"
    whole, split = load_file(one / "model.safetensors"), load_file(rest / "model.safetensors")
    assert all(torch.equal(whole[name], split[name]) for name in whole)
    log, log_split = _log(one), _log(rest)
    assert [e["loss"] for e in log_split["steps"]] == [e["loss"] for e in log["steps"]]
    assert log_split["evals"] == log["evals"] and [e["step"] for e in log["evals"]] == [5, 10]
    assert log_split["final"] == log["final"] and log_split["steps_done"] == 10
    assert [(c["first_step"], c["last_step"]) for c in log_split["calls"]] == [(0, 4), (4, 8), (8, 10)]


def test_resume_refuses_another_schedule(tmp_path):
    train_main(["--out", str(tmp_path), *SCHEDULE, *EVALS, "--max-steps", "2"])
    with pytest.raises(ValueError, match=r"other stages \(stages=\[\[128, 6, 2\], \[192, 4, 2\]\]\)"):
        train_main(["--out", str(tmp_path), "--resume", str(tmp_path), *SCHEDULE[:2], "--stages", "128:8:2",
                    *SCHEDULE[-3:]])


def test_spent_time_budget_saves_a_resumable_checkpoint(tmp_path, capsys):
    """A budget of 0.26 min leaves ~1 s of training before the save reserve: the call stops
    inside its only stage and saves the optimizer for the next call."""
    train_main(["--out", str(tmp_path), "--preset", "smoke", "--stages", "128:100000:2", "--tasks", "passkey",
                "--max-minutes", "0.26", *EVALS])
    state = _state(tmp_path)
    assert "time budget spent" in capsys.readouterr().err
    assert not state["done"] and state["progress"]["step"] < 100000 and state["optimizer_shards"] == 1
    assert _log(tmp_path)["calls"][0]["minutes"] < 0.26


def test_optimizer_shards_merge_back_and_respect_their_limit():
    model = build_model(PRESETS["smoke"])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 50, (1, 64)), labels=torch.randint(0, 50, (1, 64))).loss.backward()
    opt.step()
    state = opt.state_dict()
    limit = 64 * 1024
    shards = checkpoint.shard_optimizer_state(state, limit)
    assert len(shards) > 1 and "param_groups" in shards[0]
    for shard in shards:
        entries = shard["state"].values()
        nbytes = sum(t.numel() * t.element_size() for e in entries for t in e.values())
        assert nbytes <= limit or len(shard["state"]) == 1
    merged = checkpoint.merge_optimizer_shards(shards)
    assert merged["param_groups"] == state["param_groups"] and merged["state"].keys() == state["state"].keys()
    assert all(torch.equal(merged["state"][i][k], v) for i, e in state["state"].items() for k, v in e.items())


@pytest.mark.parametrize("max_shard_bytes", [None, 64 * 1024])
def test_checkpoint_shards_follow_max_shard_bytes_and_load_back(tmp_path, max_shard_bytes):
    """The long preset's checkpoint: the optimizer state in one file by default; with
    max_shard_bytes, in shards of at most that many tensor bytes each (a parameter whose state
    alone is larger in a shard of its own). `load` gives back the same state either way."""
    model = build_model(PRESETS["long"])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 50, (1, 64)), labels=torch.randint(0, 50, (1, 64))).loss.backward()
    opt.step()
    state = opt.state_dict()
    paths = checkpoint.save(str(tmp_path), model, state, {"seed": 0}, {"steps": []}, max_shard_bytes=max_shard_bytes)
    shards = sorted(os.path.basename(p) for p in paths if os.path.basename(p).startswith("optimizer-"))
    if max_shard_bytes is None:
        assert shards == ["optimizer-00.pt"]
    else:
        assert len(shards) > 1
        for name in shards:
            entries = torch.load(tmp_path / name)["state"].values()
            nbytes = sum(t.numel() * t.element_size() for e in entries for t in e.values())
            assert nbytes <= max_shard_bytes or len(entries) == 1
    loaded, train_state, log = checkpoint.load(str(tmp_path))
    assert train_state == {"seed": 0, "optimizer_shards": len(shards)} and log == {"steps": []}
    assert loaded["param_groups"] == state["param_groups"] and loaded["state"].keys() == state["state"].keys()
    assert all(torch.equal(loaded["state"][i][k], v) for i, e in state["state"].items() for k, v in e.items())


def test_max_shard_mb_splits_the_optimizer_and_resume_reads_the_shards(tmp_path):
    """--max-shard-mb: shards of the optimizer state; a resumed run without it reads them and
    writes one file again (the stale shards removed)."""
    train_main(["--out", str(tmp_path), *SCHEDULE, *EVALS, "--max-steps", "2", "--max-shard-mb", "0.01"])
    shards = _state(tmp_path)["optimizer_shards"]
    assert shards > 1 and len(list(tmp_path.glob("optimizer-*.pt"))) == shards
    train_main(["--out", str(tmp_path), "--resume", str(tmp_path), *EVALS, "--max-steps", "2"])
    assert _state(tmp_path)["progress"]["step"] == 4 and _state(tmp_path)["optimizer_shards"] == 1
    assert [f.name for f in tmp_path.glob("optimizer-*.pt")] == ["optimizer-00.pt"]


def test_first_stage_tasks_train_alone_then_the_rest_join(tmp_path, monkeypatch):
    """With --first-stage-tasks, the first stage's batches and evals use those tasks only; from
    the second stage on every batch (replays of the first stage's length too) and eval draws
    from all the tasks."""
    import minference_flex.retrieval.train as train_module

    drawn, evaluated = [], []
    real_samples, real_evaluate = train_module._train_samples, train_module.evaluate

    def samples(rng, length, batch, tasks):
        drawn.append((length, tuple(tasks)))
        return real_samples(rng, length, batch, tasks)

    def evaluate(model, length, per_task, tasks):
        evaluated.append((length, tuple(tasks)))
        return real_evaluate(model, length, per_task, tasks)

    monkeypatch.setattr(train_module, "_train_samples", samples)
    monkeypatch.setattr(train_module, "evaluate", evaluate)
    train_main(["--out", str(tmp_path), "--preset", "smoke", "--stages", "128:4:2", "192:12:2",
                "--tasks", "passkey", "needle", "--first-stage-tasks", "passkey", "--eval-every", "4",
                "--eval-samples", "1"])
    both = ("passkey", "needle")
    assert drawn[:4] == [(128, ("passkey",))] * 4
    assert {tasks for _, tasks in drawn[4:]} == {both}
    assert (128, both) in drawn[4:], "seed 0 replays the first stage's length in the second stage"
    assert evaluated[0] == (128, ("passkey",)) and evaluated[1] == (192, both)
    assert _state(tmp_path)["preset"]["first_stage_tasks"] == ["passkey"]


def test_first_stage_tasks_must_be_among_the_tasks(capsys):
    with pytest.raises(SystemExit):
        train_main(["--out", "unused", "--preset", "smoke", "--tasks", "passkey", "--first-stage-tasks", "needle"])
    assert "first-stage tasks ['needle'] are not among the preset's tasks ['passkey']" in (
        capsys.readouterr().err)


def test_checkpoints_from_before_first_stage_tasks_resume(tmp_path):
    """A checkpoint whose saved preset has no first_stage_tasks (written before the field
    existed) resumes: the missing field takes its default."""
    train_main(["--out", str(tmp_path), *SCHEDULE, *EVALS, "--max-steps", "2"])
    state = _state(tmp_path)
    del state["preset"]["first_stage_tasks"]
    (tmp_path / checkpoint.STATE_FILE).write_text(json.dumps(state))
    train_main(["--out", str(tmp_path), "--resume", str(tmp_path), *EVALS, "--max-steps", "2"])
    assert _state(tmp_path)["progress"]["step"] == 4


def test_shape_options_set_the_model(tmp_path, capsys):
    train_main(["--out", str(tmp_path), *SCHEDULE, *EVALS, "--max-steps", "1", "--hidden", "96", "--layers", "3",
                "--heads", "3", "--kv-heads", "1", "--intermediate", "160", "--rope-theta", "5e6"])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["hidden_size"], saved["num_hidden_layers"], saved["num_attention_heads"],
            saved["num_key_value_heads"], saved["intermediate_size"]) == (96, 3, 3, 1, 160)
    assert saved.get("rope_theta", saved.get("rope_parameters", {}).get("rope_theta")) == 5e6
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path), *SCHEDULE, "--hidden", "100", "--heads", "3"])
    assert "hidden (100) must be a multiple of heads (3)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path), "--resume", str(tmp_path), "--layers", "2"])
    assert "keep the saved model's shape" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lm-weight", "nan"], "--lm-weight must be a finite number >= 0"),
    (["--max-minutes", "nan"], "--max-minutes must be > 0"),
    (["--eval-every", "0"], "--eval-every must be >= 1"),
    (["--eval-samples", "0"], "--eval-samples must be >= 1"),
    (["--device", "gpu"], "--device gpu: not a device"),
    (["--stages", "10:1:1"], "LENGTH >= 64 tokens"),
    (["--max-shard-mb", "0"], "--max-shard-mb must be a finite number > 0"),
])
def test_bad_training_options_are_named(args, words, capsys):
    """Each was ignored (--lr 0 trained at the preset's rate), accepted (NaN) or ended in a
    traceback that did not name the option."""
    with pytest.raises(SystemExit):
        train_main(["--out", "unused", "--preset", "smoke", *args])
    assert words in capsys.readouterr().err


def test_out_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "file"), "--preset", "smoke"])
    assert "a file is there; pass a directory" in capsys.readouterr().err
