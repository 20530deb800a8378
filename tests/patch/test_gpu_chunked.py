"""Chunked pre-fill on CUDA in bf16 at real lengths (8K queries after 56K cached keys) and
through a patched model with prefill chunks. Run: pytest -m gpu."""

from __future__ import annotations

import pytest
import torch
import transformers

import minference_flex as mf
from minference_flex.patch.hf import cache_keyword
from minference_flex.ops import reference
from tests.helpers import assert_close_to_reference

pytestmark = pytest.mark.gpu

SK, SQ = 65536, 8192
# query rows checked against float64 (the whole Sq x Sk reference would not fit)
ROWS = torch.cat([torch.arange(0, 96), torch.arange(4000, 4070), torch.arange(SQ - 130, SQ)])


def _qkv(heads=4, kv_heads=2, dim=128):
    q = torch.randn(1, heads, SK, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, SK, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, kv_heads, SK, dim, device="cuda", dtype=torch.bfloat16)
    return q, k, v


def _check_rows(out, q, k, v, mask):
    rows = ROWS.cuda()
    assert_close_to_reference(out[:, :, rows], q[:, :, rows], k, v, mask[:, :, rows] if mask.dim() == 4 else mask[rows])


def _selection_mask(tiles, count, q_len, seq_len, block=64):
    """[B, H, Sq, Sk] of a block-sparse selection for the last q_len queries: the chosen tiles,
    the key tiles of each query tile's own positions, causal."""
    first = seq_len - q_len
    q_tiles, k_tiles = tiles.shape[2], -(-seq_len // block)
    keep = torch.zeros(*tiles.shape[:2], q_tiles, k_tiles + 1, dtype=torch.bool, device=tiles.device)
    valid = torch.arange(tiles.shape[-1], device=tiles.device) < count[..., None]
    keep.scatter_(-1, torch.where(valid, tiles.long(), k_tiles), True)
    keep = keep[..., :k_tiles]
    q_tile_of = torch.arange(q_len, device=tiles.device) // block
    k_tile_of = torch.arange(seq_len, device=tiles.device) // block
    keep[:, :, q_tile_of, k_tile_of[first:]] = True
    return keep[:, :, q_tile_of][:, :, :, k_tile_of] & reference.causal_mask(seq_len, tiles.device, q_len)


@pytest.mark.parametrize("dim", [128, 64])
def test_every_op_on_a_chunk_of_64k_keys_cuda(dim):
    q_all, k, v = _qkv(dim=dim)
    q = q_all[:, :, SK - SQ:]
    causal = reference.causal_mask(SK, "cuda", SQ)
    _check_rows(mf.dense_attention(q, k, v), q, k, v, causal)
    _check_rows(mf.streaming_forward(q, k, v, 128, 4096), q, k, v, reference.a_shape_mask(SK, 128, 4096, "cuda", SQ))
    v_idx, s_idx = mf.estimate_vertical_slash(q, k, 300, 800)
    vs = mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False)
    _check_rows(vs, q, k, v, reference.vertical_slash_mask(v_idx, s_idx, SK, 64, SQ))
    tiles, count = mf.select_block_sparse_tiles(q, k, 100)
    bs = mf.block_sparse_attention(q, k, v, 100)
    _check_rows(bs, q, k, v, _selection_mask(tiles, count, SQ, SK))


def test_aligned_chunk_gives_the_rows_of_the_whole_cuda():
    q, k, v = _qkv()
    chunk = q[:, :, SK - SQ:]
    v_idx = torch.randint(0, SK, (1, 4, 500), device="cuda")
    s_idx = torch.randint(0, SK, (1, 4, 300), device="cuda")
    for name, run in {
        "dense": lambda q, k, v: mf.dense_attention(q, k, v),
        "a_shape": lambda q, k, v: mf.streaming_forward(q, k, v, 128, 4096),
        "block_sparse": lambda q, k, v: mf.block_sparse_attention(q, k, v, 100),
        "vertical_slash": lambda q, k, v: mf.vertical_slash_sparse_attention(q, k, v, v_idx, s_idx, dense_fallback=False),
    }.items():
        whole = run(q, k, v)[:, :, SK - SQ:].float()
        part = run(chunk, k, v).float()
        err = (part - whole).abs().max().item()
        assert err < 2e-2, f"{name}: the chunk differs from the whole's rows by {err}"


def test_decode_step_through_every_op_cuda():
    q, k, v = _qkv()
    one = q[:, :, -1:]
    dense = mf.dense_attention(one, k, v).float()
    want = reference.masked_attention(one, k, v, torch.ones(1, SK, dtype=torch.bool, device="cuda")).float()
    assert (dense - want).abs().max() < 2e-2
    for out in (mf.streaming_forward(one, k, v, 128, 4096), mf.block_sparse_attention(one, k, v, 100),
                mf.dynamic_vertical_slash_attention(one, k, v, 1000, 6096)):
        assert out.shape == one.shape and torch.isfinite(out).all()


def _tiny_model(layers=2):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=512, intermediate_size=1024, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=65536,
    )
    return transformers.AutoModelForCausalLM.from_config(config).to("cuda", torch.bfloat16).eval()


@pytest.mark.parametrize("cache", ["dynamic", "offloaded", "host"])
def test_generate_with_prefill_chunks_goes_sparse_cuda(cache, monkeypatch):
    from minference_flex.patch import hf

    calls = []
    real = hf.sparse_prefill
    monkeypatch.setattr(hf, "sparse_prefill", lambda q, k, *a, **kw: calls.append((q.shape[2], k.shape[2])) or real(q, k, *a, **kw))
    model = _tiny_model()
    ids = torch.randint(1, 128, (1, 20000), device="cuda")
    extra = {"dynamic": {}, "offloaded": {"cache_implementation": "offloaded"},
             "host": {cache_keyword(model): mf.HostOffloadedCache(model.config)}}[cache]
    with torch.no_grad():
        dense = model(ids).logits[:, -1].float()
        full = [{str(h): ["vertical_and_slash", 10**6, 10**6, 0] for h in range(4)}] * 2
        mf.compile(model, full, min_sparse_len=8192, dense_fallback=False)
        out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, prefill_chunk_size=8192,
                             output_logits=True, return_dict_in_generate=True, **extra)
    first = out.logits[0].float()
    assert (first - dense).abs().max() < 0.05 * dense.abs().max()
    assert (8192, 16384) in calls and any(kv == 20000 and q > 1 for q, kv in calls)


def test_host_offloaded_cache_gives_the_dynamic_cache_logits_cuda():
    """A patched model's chunked pre-fill over `HostOffloadedCache` (pinned blocks, side-stream
    fetches) equals the same over a `DynamicCache`, bit for bit, and frees the GPU of the
    cache between turns."""
    model = _tiny_model(layers=3)
    mf.compile(model, min_sparse_len=8192)
    ids = torch.randint(1, 128, (1, 40000), device="cuda")

    def prefill(cache):
        with torch.no_grad():
            return torch.cat([model(ids[:, a:a + 8192], **{cache_keyword(model): cache}, use_cache=True).logits[:, -1:]
                              for a in range(0, ids.shape[1], 8192)], 1)

    expected = prefill(transformers.DynamicCache(config=model.config))
    cache = mf.HostOffloadedCache(model.config)
    got = prefill(cache)
    torch.cuda.synchronize()
    assert torch.equal(got, expected)
    assert cache.get_seq_length() == 40000
    assert [layer.resident for layer in cache.layers] == [True, False, False]  # the first, fetched ahead
    assert all(block.is_pinned() for layer in cache.layers for blocks in layer._host for block in blocks)
