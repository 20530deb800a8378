"""SmolLM2-135M-Instruct, a real pretrained LLM, with the config shipped for it: sparse pre-fill
keeps its answers to held-out passkey samples in real text (CPU; the Triton kernels run in
their interpreter, so the prompts are short: ~1K tokens, every call sparse)."""

from __future__ import annotations

import random
import warnings

import pytest

import minference_flex as mf
from minference_flex.llms import pretrained
from minference_flex.llms import text_tasks
from minference_flex.patterns.config import shipped_config_path
from minference_flex.metrics.tile_count import count_tiles

from tests.helpers import smollm2_or_skip  # noqa: E402

smollm2_or_skip()


@pytest.fixture(scope="module")
def smollm2():
    try:
        return pretrained.load_text_model("smollm2")
    except ValueError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_the_shipped_config_is_found_by_the_models_name(smollm2):
    model, _ = smollm2
    assert model.config._name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    path = shipped_config_path(model.config._name_or_path)
    assert path is not None and path.endswith("SmolLM2_135M_Instruct_8k_searched.json")
    config = mf.load_pattern_config(path, model.config.num_hidden_layers, model.config.num_attention_heads)
    assert len({p.kind for layer in config for p in layer}) >= 2  # a searched mix, not one pattern everywhere


@pytest.mark.slow
def test_sparse_prefill_keeps_held_out_passkey_answers(smollm2):
    """One sample through the kernels (the vertical-slash one interpreted: ~1 min), three more
    through the exact-mask path, which the kernels equal (tests/ops/test_exact_masks_cpu.py)."""
    model, tasks = smollm2
    samples = []
    for _ in range(10):  # held-out samples the model answers densely (its own errors are the table's business)
        sample = tasks.sample("passkey", 1024 + random.randrange(64), 10**9 + random.randrange(10**6))
        if tasks.correct(model, sample):
            samples.append(sample)
        if len(samples) == 4:
            break
    assert len(samples) == 4, f"the model answered {len(samples)} of 10 passkey samples densely"
    for exact, batch in ((False, samples[:1]), (True, samples[1:])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf.compile(model, None, min_sparse_len=512, min_chunk_len=512, exact_masks=exact)  # None: shipped
        try:
            with count_tiles() as tiles:
                got = [tasks.continuation(model, s) for s in batch]
        finally:
            mf.restore(model)
        sparse_kinds = {kind for kind, (_, causal) in tiles.by_kind.items() if kind != "dense" and causal}
        assert len(sparse_kinds) >= 2, f"the sparse path did not run its patterns: {tiles.by_kind}"
        for sample, text in zip(batch, got):
            assert text_tasks.is_correct(text, sample), (exact, sample.answer, text)
