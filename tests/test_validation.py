"""Bad input raises ValueError/TypeError naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from tests.helpers import random_qkv


def _qkv():
    return random_qkv(1, 4, 2, 64, 32)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda q, k, v: mf.streaming_forward(q, k[:, :, :10], v[:, :, :10], 4, 8), ValueError, "Sq <= Sk"),
        (lambda q, k, v: mf.streaming_forward(q, k[:, :1].expand(1, 3, 64, 32), v[:, :1].expand(1, 3, 64, 32), 4, 8), ValueError, "multiple of k/v heads"),
        (lambda q, k, v: mf.streaming_forward(q.double(), k.double(), v.double(), 4, 8), TypeError, "float32"),
        (lambda q, k, v: mf.streaming_forward(q, k.half(), v, 4, 8), TypeError, "one dtype"),
        (lambda q, k, v: mf.streaming_forward(q[0], k, v, 4, 8), ValueError, "4 dimensions"),
        (lambda q, k, v: mf.streaming_forward(q, k, v, -1, 8), ValueError, "init_num"),
        (lambda q, k, v: mf.streaming_forward(q, k, v, 4, 2.5), TypeError, "local_window_num"),
        (lambda q, k, v: mf.block_sparse_attention(q, k, v, 0), ValueError, "topk"),
        (lambda q, k, v: mf.block_sparse_attention(q, k, v, 3, block_size=48), ValueError, "block_size"),
        (lambda q, k, v: mf.estimate_vertical_slash(q, k, -5, 100), ValueError, "vertical_size"),
        (lambda q, k, v: mf.estimate_vertical_slash(q, k, 5, -100), ValueError, "slash_size"),
        (lambda q, k, v: mf.vertical_slash_sparse_attention(q, k, v, torch.zeros(1, 4, 3), torch.zeros(1, 4, 3, dtype=torch.long)), TypeError, "v_idx"),
        (lambda q, k, v: mf.vertical_slash_sparse_attention(q, k, v, torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 4, 3, dtype=torch.long)), ValueError, "one row per query head"),
        (lambda q, k, v: mf.streaming_forward(q, k.to("meta"), v.to("meta"), 4, 8), ValueError, "one device"),
    ],
)
def test_bad_input_is_named(call, error, words):
    q, k, v = _qkv()
    with pytest.raises(error, match=words):
        call(q, k, v)
