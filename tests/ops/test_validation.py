"""Bad input raises ValueError/TypeError naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch

import minference_flex as mf
from tests.helpers import random_qkv


def _qkv():
    return random_qkv(1, 4, 2, 64, 32)


_LONG = torch.zeros(1, 4, 3, dtype=torch.long)


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
        (lambda q, k, v: mf.dense_attention(q[..., :0], k[..., :0], v[..., :0]), ValueError, "both must be >= 1"),
        (lambda q, k, v: mf.vertical_slash_sparse_attention(q, k, v, _LONG, _LONG, dense_fallback="no"), TypeError, "dense_fallback must be a bool"),
    ],
)
def test_bad_input_is_named(call, error, words):
    q, k, v = _qkv()
    with pytest.raises(error, match=words):
        call(q, k, v)



@pytest.mark.parametrize("scale, error", [(0.0, ValueError), (-0.125, ValueError), (float("nan"), ValueError),
                                          (float("inf"), ValueError), ("0.1", TypeError), (True, TypeError)])
@pytest.mark.parametrize("call", [
    lambda q, k, v, s: mf.dense_attention(q, k, v, scale=s),
    lambda q, k, v, s: mf.streaming_forward(q, k, v, 4, 8, scale=s),
    lambda q, k, v, s: mf.block_sparse_attention(q, k, v, 2, scale=s),
    lambda q, k, v, s: mf.estimate_vertical_slash(q, k, 4, 8, scale=s),
    lambda q, k, v, s: mf.vertical_slash_sparse_attention(q, k, v, _LONG, _LONG, scale=s),
], ids=["dense", "a_shape", "block_sparse", "estimate", "vertical_slash"])
def test_a_scale_that_is_not_a_positive_number_is_named(call, scale, error):
    """A scale <= 0 made the vertical-slash kernel's running maximum wrong (NaN rows)."""
    with pytest.raises(error, match="scale must be"):
        call(*_qkv(), scale)


def test_a_shape_budgets_past_the_keys_are_clamped():
    q, k, v = _qkv()
    want = mf.streaming_forward(q, k, v, 64, 64)
    torch.testing.assert_close(mf.streaming_forward(q, k, v, 2**40, 2**40), want, rtol=0, atol=0)
    torch.testing.assert_close(mf.streaming_forward(q, k, v, 2**31, 64), want, rtol=0, atol=0)


def test_checks_run_inside_a_fullgraph_compile():
    """Inside torch.compile the checks still run (a bad index shape reached the kernel:
    a segfault); Dynamo reports the check's message."""
    q, k, v = _qkv()
    attend = torch.compile(lambda q, k, v, a, b: mf.vertical_slash_sparse_attention(q, k, v, a, b), fullgraph=True)
    bad = torch.zeros(1, 2, 3, dtype=torch.long)  # one row per kv head, not per query head
    with pytest.raises(Exception, match="one row per query head"):
        attend(q, k, v, bad, bad)
