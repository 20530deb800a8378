"""lm_quality: perplexity and KL(dense || method) on text, against a direct computation
(CPU, tiny random Llama)."""

from __future__ import annotations

import math
import random

import torch

from tests.models import tiny_llama_config, tiny_model
from minference_flex.patterns.config import VERTICAL_SLASH, HeadPattern
from minference_flex.evaluation.lm_quality import lm_quality

LLAMA = tiny_llama_config(vocab_size=96, hidden_size=64, intermediate_size=128, initializer_range=0.3)


def test_perplexity_and_kl_match_a_direct_computation():
    model = tiny_model(LLAMA, seed=random.randrange(2**31))
    length, positions = random.randrange(700, 900), random.choice([16, 33])
    texts = [torch.randint(0, 96, (1, length)) for _ in range(2)]
    tight = [[HeadPattern(VERTICAL_SLASH, 30, 64)] * 4 for _ in range(2)]
    rows = lm_quality(model, texts, {"dense": None, "tight": tight}, positions)
    with torch.no_grad():
        nll = 0.0
        for ids in texts:
            logp = model(ids).logits[0].float().log_softmax(-1)
            nll -= logp[length - positions : length - 1].gather(-1, ids[0, length - positions + 1 :, None]).sum().item()
    dense, sparse = rows
    assert dense["method"] == "dense" and dense["kl_vs_dense"] == 0.0 and dense["tile_fraction"] == 1.0
    assert math.isclose(dense["perplexity"], math.exp(nll / (2 * (positions - 1))), rel_tol=1e-4)
    # (30, 64) drops most keys of these rows: the distributions move, and fewer tiles run
    assert sparse["kl_vs_dense"] > 1e-4 and sparse["tile_fraction"] < 1.0
    assert sparse["perplexity"] != dense["perplexity"]
