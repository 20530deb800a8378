"""A long-lived process with Dynamo's default recompile limit (CPU: FlexAttention compiled by
Inductor): one patched model serving prompts of many lengths and chunk sizes never meets the
limit; once every kind of call has been seen, new lengths compile nothing more."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import minference_flex as mf
from minference_flex.ops import flex
from tests.models import tiny_llama_config, tiny_model

# A-shape heads of different budgets beside a block-sparse head: several masks in one layer
CONFIG = [{"0": ["stream_llm", 4, 64, 1], "1": ["block_sparse", 0, 0, 1],
           "2": ["stream_llm", 16, 32, 1], "3": ["stream_llm", 0, 100, 1]}] * 2


@pytest.fixture
def default_limits():
    """A fresh Dynamo with its default recompile limit (the suite raises it elsewhere)."""
    torch._dynamo.reset()
    flex._compiled_flex.cache_clear()
    with torch._dynamo.config.patch(recompile_limit=8):
        yield
    torch._dynamo.reset()
    flex._compiled_flex.cache_clear()


def _serve(model, length, chunk):
    ids = torch.randint(1, 128, (1, length))
    extra = {} if chunk is None else {"prefill_chunk_size": chunk}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(ids, max_new_tokens=2, do_sample=False, **extra)


def test_a_serving_loop_never_meets_the_recompile_limit(default_limits):
    model = mf.compile(tiny_model(tiny_llama_config()), CONFIG, min_sparse_len=256, min_chunk_len=64)
    warmup = [(300, None), (700, None), (300, None), (700, 256), (1000, 128), (500, 128)]
    for length, chunk in warmup:
        _serve(model, length, chunk)
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    for _ in range(6):  # lengths and chunk sizes not seen before
        _serve(model, random.randrange(260, 1300), random.choice([None, 128, 192, 256]))
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames, "a new length compiled again"
