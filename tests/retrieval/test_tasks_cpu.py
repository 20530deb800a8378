"""Synthetic tasks, the word tokenizer and the training script (CPU)."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
import torch

from minference_flex.retrieval.tasks import TASKS, TOKENIZER, exact_match, make_sample
from minference_flex.retrieval.train import PRESETS, batch_of, main as train_main


def _find(seq: list[int], sub: list[int]) -> list[int]:
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub]


@pytest.mark.parametrize("task", TASKS)
def test_samples_are_exact_length_seeded_and_answerable(task):
    length = random.randrange(300, 3000) | 1  # odd, fresh each run
    seed = random.randrange(10**6)
    sample = make_sample(task, length, seed)
    assert len(sample.prompt) == length and sample.prompt[0] == TOKENIZER.bos_id
    assert make_sample(task, length, seed) == sample
    assert make_sample(task, length, seed + 1).prompt != sample.prompt
    assert all(TOKENIZER.vocab[t].isdigit() for t in sample.answer)
    # the asked fact is in the context exactly where `depth` says, and nowhere else
    text = TOKENIZER.decode(sample.prompt)
    answer = TOKENIZER.decode(sample.answer)
    hits = _find(sample.prompt, sample.answer)
    assert hits, f"answer {answer} not in the prompt"
    question = text[text.rindex(". ") :]
    if task == "passkey":
        assert f"the pass key is {answer}" in text
    elif task in ("needle", "multikey"):
        word = question.split(" for ")[1].split()[0]
        assert f"special magic numbers for {word} is: {answer}" in text
        assert text.count("special magic numbers for") == (1 if task == "needle" else 4)
    else:
        key = question.split(" key ")[1].split("?")[0]
        assert f"key {key} value {answer}." in text
    assert abs(sample.depth * length - min(hits)) < 30


def test_held_out_samples_are_those_of_before_the_depth_option():
    """Fingerprint of the held-out samples (seeds 10**9 + i) as drawn before `depth` existed:
    the accuracy tables of the shipped model are measured on them."""
    digest = hashlib.sha256()
    for task in TASKS:
        for length in (256, 1000, 4096):
            for i in range(5):
                s = make_sample(task, length, 10**9 + i)
                assert make_sample(task, length, 10**9 + i, depth=None) == s
                digest.update(repr((s.prompt, s.answer, s.depth)).encode())
    assert digest.hexdigest() == "30d521e5eaed0c0654c7ee2dc71dae097f9dc334842d5cfe6a27802187f84caf"


# the asked needle's tokens (its key and number have fixed widths)
NEEDLE_TOKENS = {
    "passkey": len(TOKENIZER.encode("the pass key is 1 2 3 4 5 . remember it . 1 2 3 4 5 is the pass key .")),
    "needle": len(TOKENIZER.encode("one of the special magic numbers for apple is : 1 2 3 4 5 6 7 .")),
}
NEEDLE_TOKENS["multikey"] = NEEDLE_TOKENS["needle"]


@pytest.mark.parametrize("task", ["passkey", "needle", "multikey"])
def test_depth_moves_only_the_asked_needle(task):
    length = random.randrange(500, 3000)
    seed = random.randrange(10**6)
    free = make_sample(task, length, seed)
    depths = [0.0, *sorted(random.uniform(0.1, 0.9) for _ in range(3)), 1.0]
    starts = []
    for depth in depths:
        placed = make_sample(task, length, seed, depth=depth)
        assert placed.answer == free.answer and len(placed.prompt) == length
        start = round(placed.depth * length)
        starts.append(start)
        if 0 < depth < 1:  # within a sentence or a needle of the asked depth
            assert abs(start - depth * length) <= 20, (depth, placed.depth)
        # the rest of the prompt is the one drawn without `depth`
        free_start = round(free.depth * length)
        span = NEEDLE_TOKENS[task]
        assert placed.prompt[start:start + span] == free.prompt[free_start:free_start + span]
        assert (placed.prompt[:start] + placed.prompt[start + span:]
                == free.prompt[:free_start] + free.prompt[free_start + span:])
    assert starts == sorted(starts) and starts[0] < 40 and starts[-1] > length - 60, "0 and 1: the ends"


def test_tokenizer_round_trip_and_errors():
    text = "the pass key is 40213. remember it. what is the special magic number for tiger?"
    assert TOKENIZER.decode(TOKENIZER.encode(text)) == text
    assert TOKENIZER.encode("4 0 2") == [TOKENIZER.ids[d] for d in "402"]
    with pytest.raises(ValueError, match="'zebra' is not in the tasks' built-in vocabulary"):
        TOKENIZER.encode("the zebra is blue")


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="unknown task 'essay'"):
        make_sample("essay", 1000, 0)
    with pytest.raises(ValueError, match="length must be an int >= 64"):
        make_sample("passkey", 10, 0)
    with pytest.raises(ValueError, match="too short for this task; use at least"):
        make_sample("multikey", 100, 0)
    with pytest.raises(ValueError, match=r"depth must be a fraction in \[0, 1\]"):
        make_sample("needle", 1000, 0, depth=1.5)
    with pytest.raises(ValueError, match="depth does not apply to kv"):
        make_sample("kv", 1000, 0, depth=0.5)


def test_exact_match():
    assert exact_match([5, 6, 7, 9], [5, 6, 7])
    assert not exact_match([5, 6, 8], [5, 6, 7])
    assert not exact_match([5, 6], [5, 6, 7])


def test_batch_targets_are_the_answers():
    samples = [make_sample("needle", 257, s) for s in range(3)]
    ids, targets, on_answer = batch_of(samples, "cpu")
    assert ids.shape == targets.shape == on_answer.shape == (3, 257 + 7 - 1)
    for row, s in enumerate(samples):
        assert targets[row][on_answer[row]].tolist() == s.answer
        assert ids[row, : len(s.prompt)].tolist() == s.prompt
        assert targets[row, :-7].tolist() == s.prompt[1:]


def test_training_script_runs_and_saves_a_loadable_model(tmp_path, capsys):
    from transformers import LlamaForCausalLM

    out = tmp_path / "model"
    train_main(["--out", str(out), "--preset", "smoke", "--stages", "128:6:2", "--eval-every", "5",
                "--eval-samples", "1", "--tasks", "passkey", "needle"])
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps_done"] == 6 and all(torch.isfinite(torch.tensor(e["loss"])) for e in log["steps"])
    assert set(log["final"]["128"]) == {"passkey", "needle"}
    model = LlamaForCausalLM.from_pretrained(out)
    smoke = PRESETS["smoke"]
    assert model.config.num_hidden_layers == smoke.layers and model.config.vocab_size == len(TOKENIZER)
    assert os.path.exists(out / "model.safetensors")


def test_training_cli_rejects_bad_stages(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path), "--stages", "128:0"])
    assert "--stages wants LENGTH:STEPS:BATCH" in capsys.readouterr().err


@pytest.mark.slow
def test_training_script_fine_tunes_through_the_sparse_patterns(tmp_path, monkeypatch):
    """--init a saved model, --sparse-attention CONFIG: every training forward of >= 128
    tokens runs the sparse patterns (counted), losses stay finite, the saved model is plain."""
    from transformers import LlamaForCausalLM

    from minference_flex.patch import hf

    first = tmp_path / "first"
    train_main(["--out", str(first), "--preset", "smoke", "--stages", "128:2:2", "--eval-every", "100",
                "--eval-samples", "1", "--tasks", "passkey"])
    patterns = [{"0": ["vertical_and_slash", 30, 100, 0], "1": ["stream_llm", 4, 64, 0]}] * PRESETS["smoke"].layers
    config = tmp_path / "patterns.json"
    config.write_text(json.dumps(patterns))
    calls = []
    real = hf.sparse_prefill
    monkeypatch.setattr(hf, "sparse_prefill", lambda *a, **k: calls.append(a[0].requires_grad) or real(*a, **k))
    out = tmp_path / "sparse"
    train_main(["--out", str(out), "--preset", "smoke", "--init", str(first), "--stages", "256:10:2",
                "--sparse-attention", str(config), "--min-sparse-len", "128", "--eval-every", "100",
                "--eval-samples", "1", "--tasks", "passkey"])
    log = json.loads((out / "train_log.json").read_text())
    assert log["sparse_attention"] == {"config": str(config), "min_sparse_len": 128} and log["init"] == str(first)
    assert log["steps_done"] == 10 and len(log["steps"]) == 1 and torch.isfinite(torch.tensor(log["steps"][0]["loss"]))
    assert calls.count(True) == 10 * PRESETS["smoke"].layers, "each training step runs every layer sparse"
    assert LlamaForCausalLM.from_pretrained(out).config._attn_implementation != "minference_flex"
