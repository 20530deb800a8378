"""minference_flex.compile on tiny random Hugging Face models (CPU, fp32, no downloads)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import minference_flex as mf
from minference_flex.patch.hf import cache_keyword
from minference_flex.patterns.config import shipped_config_path

from tests.models import COMMON, HEADS, LAYERS, MIXED, tiny_model, uniform

SEQ = 600


def _configs():
    out = [
        ("llama", transformers.LlamaConfig(**COMMON, rope_theta=500000.0)),
        ("mistral", transformers.MistralConfig(**COMMON, sliding_window=None)),
        ("qwen2", transformers.Qwen2Config(**COMMON)),
        ("phi3", transformers.Phi3Config(**COMMON, pad_token_id=0)),
    ]
    if hasattr(transformers, "Glm4Config"):
        out.append(("glm4", transformers.Glm4Config(**COMMON, head_dim=32, pad_token_id=0, eos_token_id=1)))
    return out


ARCHS = _configs()




# Llama in the quick run; the other architectures in the full one
ARCH_PARAMS = [pytest.param(n, c, id=n, marks=() if n == "llama" else pytest.mark.slow) for n, c in ARCHS]


@pytest.mark.parametrize("name, config", ARCH_PARAMS)
def test_full_budgets_equal_unpatched_and_small_budgets_go_sparse(name, config):
    model = tiny_model(config)
    ids = torch.randint(1, 128, (1, SEQ))
    with torch.no_grad():
        dense = model(ids).logits
        mf.compile(model, uniform("vertical_and_slash", 10**6, 10**6), min_sparse_len=256, dense_fallback=False)
        full = model(ids).logits
        torch.testing.assert_close(full, dense, rtol=1e-4, atol=1e-4)
        mf.compile(model, MIXED, min_sparse_len=256)
        sparse = model(ids).logits
    assert torch.isfinite(sparse).all()
    assert (sparse - dense).abs().max() > 1e-3, "small budgets must change the output (sparse path taken)"
    generated = model.generate(ids[:, :300], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 304)


def test_decode_steps_match_unpatched_given_the_same_cache():
    name, config = ARCHS[0]
    model = tiny_model(config)
    ids = torch.randint(1, 128, (1, 400))
    with torch.no_grad():
        reference = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        mf.compile(model, uniform("vertical_and_slash", 10**6, 10**6), min_sparse_len=256, dense_fallback=False)
        patched = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(patched, reference)


def test_short_prompts_stay_dense_and_restore_gives_back_the_model():
    model = tiny_model(ARCHS[0][1])
    ids = torch.randint(1, 128, (2, 100))
    with torch.no_grad():
        dense = model(ids).logits
        mf.compile(model, MIXED)  # default min_sparse_len: 100 tokens stay dense
        assert model.config._attn_implementation == "minference_flex"
        torch.testing.assert_close(model(ids).logits, dense)
        mf.restore(model)
        assert model.config._attn_implementation == "sdpa"
        torch.testing.assert_close(model(ids).logits, dense)


def test_padded_batch_attends_no_padded_key():
    model = tiny_model(ARCHS[0][1])
    mf.compile(model, MIXED, min_sparse_len=256)
    ids = torch.randint(1, 128, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :50] = 0  # left padding
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, 50:]).logits
    torch.testing.assert_close(batched[1, 50:], alone[0], rtol=1e-4, atol=1e-4)


def test_config_file_and_from_pretrained(tmp_path):
    model = tiny_model(ARCHS[0][1])
    model.save_pretrained(tmp_path / "model")
    path = tmp_path / "patterns.json"
    path.write_text(json.dumps(MIXED))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    mf.compile(loaded, str(path), min_sparse_len=256)
    ids = torch.randint(1, 128, (1, 300))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits.shape, model(ids).logits.shape)
        assert torch.isfinite(loaded(ids).logits).all()


def test_unknown_model_gets_default_and_a_warning_naming_search():
    model = tiny_model(ARCHS[0][1])
    with pytest.warns(UserWarning, match="minference_flex search"):
        mf.compile(model)
    plan = model.model.layers[0].self_attn._minference_flex_plan
    assert set(plan.kinds) == {"vertical_and_slash"} and set(plan.a) == {1000} and set(plan.b) == {6096}


def test_shipped_config_found_by_name():
    assert shipped_config_path("gradientai/Llama-3-8B-Instruct-262k").endswith(
        "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json"
    )
    assert shipped_config_path("/models/llama-3-8b-instruct-262k") is not None
    config = mf.load_pattern_config(None, 32, 32, "gradientai/Llama-3-8B-Instruct-262k")
    assert len(config) == 32 and config[0][0].kind == "vertical_and_slash"


@pytest.mark.parametrize(
    "config, words",
    [
        (uniform("vertical_and_slash", 1, 1)[:1], "has 1 layers but the model has 2"),
        ([{"0": ["vertical_and_slash", 1, 1, 0]}] * LAYERS, "has 1 heads but the model has 4"),
        (uniform("diagonal", 1, 1), "unknown pattern 'diagonal'"),
        (uniform("vertical_and_slash", -1, 100), "must be >= 0"),
        (uniform("stream_llm", 0, 0), "attends nothing"),
        ("/no/such/file.json", "not found"),
        ("/", "is a directory"),
    ],
)
def test_bad_configs_are_named(config, words):
    model = tiny_model(ARCHS[0][1])
    with pytest.raises(mf.PatternConfigError, match=words):
        mf.compile(model, config)


def test_bad_options_are_named():
    model = tiny_model(ARCHS[0][1])
    with pytest.raises(TypeError, match="options are"):
        mf.compile(model, MIXED, min_sparse_length=5)
    with pytest.raises(ValueError, match="min_sparse_len"):
        mf.compile(model, MIXED, min_sparse_len=0)
    with pytest.warns(UserWarning, match="every layer stays dense"):
        mf.compile(model, MIXED, starting_layer=LAYERS)


@pytest.mark.slow
def test_torch_compile_of_the_patched_model():
    """Vertical-slash layers (estimator, index, Triton op, dense-fallback cond) compile with
    fullgraph on CPU. Mixed layers are compiled on the GPU (tests/patch/test_gpu_models.py):
    Inductor's CPU FlexAttention template cannot fuse the epilogues a whole model adds."""
    model = tiny_model(ARCHS[0][1])
    mf.compile(model, uniform("vertical_and_slash", 30, 100), min_sparse_len=256)
    ids = torch.randint(1, 128, (1, 384))
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        # fullgraph: the sparse attention path has no graph break (the KV cache object of
        # transformers is left out: it breaks graphs on its own)
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, eager, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="before torch.compile"):
        mf.compile(compiled, MIXED)


def test_compile_takes_head_pattern_lists_as_search_returns_them():
    from minference_flex.patterns.config import HeadPattern

    model = tiny_model(ARCHS[0][1])
    ids = torch.randint(1, 128, (1, SEQ))
    as_lists = [[HeadPattern(*MIXED[0][str(h)][:3]) for h in range(HEADS)] for _ in range(LAYERS)]
    with torch.no_grad():
        mf.compile(model, MIXED, min_sparse_len=256)
        from_file_format = model(ids).logits
        mf.compile(model, as_lists, min_sparse_len=256)
        from_lists = model(ids).logits
    torch.testing.assert_close(from_lists, from_file_format, rtol=0, atol=0)
    with pytest.raises(mf.PatternConfigError, match="layer 0: has 1 heads but the model has"):
        mf.compile(model, [[HeadPattern("stream_llm", 4, 8)]] * LAYERS)


def _windowed_configs():
    return [
        # every layer windowed: the sparse patterns of MIXED must not run anywhere
        ("mistral", transformers.MistralConfig(**COMMON, sliding_window=48), MIXED),
        # Qwen2: a window on the layers from max_window_layers on (layer 1 here); layer 0 runs
        # its patterns, with budgets that cover every key
        ("qwen2", transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=48, max_window_layers=1),
         uniform("vertical_and_slash", 10**6, 10**6)),
    ]


@pytest.mark.parametrize("name, config, patterns", _windowed_configs(), ids=[n for n, *_ in _windowed_configs()])
def test_sliding_window_layers_keep_their_window(name, config, patterns):
    """A layer whose sliding window cuts keys runs its own window attention (whole prompts,
    padded batches and chunks over a cache alike), not the patterns or causal attention."""
    model = tiny_model(config)
    model.config._attn_implementation = "eager"  # the reference applies the window itself
    ids = torch.randint(1, 128, (2, 300))
    padding = torch.ones_like(ids)
    padding[1, :37] = 0
    with torch.no_grad():
        want, want_padded = model(ids).logits, model(ids, attention_mask=padding).logits
        mf.compile(model, patterns, min_sparse_len=128, min_chunk_len=64, dense_fallback=False)
        got, got_padded = model(ids).logits, model(ids, attention_mask=padding).logits
        cache = transformers.DynamicCache(config=model.config)
        chunks = [model(ids[:, a:a + 100], **{cache_keyword(model): cache}, use_cache=True).logits
                  for a in range(0, 300, 100)]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_padded[0], want_padded[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_padded[1, 37:], want_padded[1, 37:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat(chunks, 1), want, rtol=1e-4, atol=1e-4)


def test_attention_features_the_kernels_lack_are_refused():
    gemma2 = transformers.Gemma2Config(**COMMON, head_dim=32, attn_logit_softcapping=50.0)
    model = mf.compile(tiny_model(gemma2), min_sparse_len=128)
    with pytest.raises(ValueError, match="soft-capping"), torch.no_grad():
        model(torch.randint(1, 128, (1, 50)))
    if hasattr(transformers, "GptOssConfig"):
        gpt_oss = transformers.GptOssConfig(**COMMON, head_dim=32, num_local_experts=2, num_experts_per_tok=1)
        model = mf.compile(tiny_model(gpt_oss), min_sparse_len=128)
        with pytest.raises(ValueError, match="attention sinks"), torch.no_grad():
            model(torch.randint(1, 128, (1, 50)))
    bert = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=128)
    with pytest.raises(ValueError, match="bidirectional"):
        mf.compile(transformers.AutoModelForMaskedLM.from_config(bert))


def test_save_pattern_config_writes_only_what_load_reads_back(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(mf.PatternConfigError, match="unknown pattern 'foo'"):
        mf.save_pattern_config([[("foo", 1, 2)] * HEADS] * LAYERS, path)
    with pytest.raises(mf.PatternConfigError, match="one number per head"):
        mf.save_pattern_config([[("vertical_and_slash", 1, 2)] * HEADS] * LAYERS, path, scores=[[0.5]] * LAYERS)
    patterns = [[("vertical_and_slash", 30, 100), ("stream_llm", 4, 64), ("block_sparse", 0, 0), ("vertical_and_slash", 1, 2)]] * LAYERS
    mf.save_pattern_config(patterns, path)
    assert mf.load_pattern_config(path, LAYERS, HEADS) == [[mf.HeadPattern(*p) for p in layer] for layer in patterns]
    binary = tmp_path / "weights.json"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(mf.PatternConfigError, match="not a text file"):
        mf.load_pattern_config(binary, LAYERS, HEADS)


def test_inputs_the_model_path_cannot_run_are_named(monkeypatch):
    model = mf.compile(tiny_model(ARCHS[0][1]), MIXED, min_sparse_len=64)
    ids = torch.randint(1, 128, (1, 120))
    with pytest.raises(ValueError, match="4-D mask"), torch.no_grad():
        model(ids, attention_mask=torch.ones(1, 1, 120, 120, dtype=torch.bool))
    # a float64 model on the CPU: refused at compile without CUDA, at its first sparse forward with
    # (it could still have moved to the GPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TypeError, match="float64 on the CPU"):
        mf.compile(tiny_model(ARCHS[0][1]).double(), uniform("block_sparse", 0, 0), min_sparse_len=64)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    doubled = mf.compile(tiny_model(ARCHS[0][1]).double(), uniform("block_sparse", 0, 0), min_sparse_len=64)
    monkeypatch.undo()
    with pytest.raises(TypeError, match="float64"), torch.no_grad():
        doubled(ids)


def test_a_bf16_model_on_a_cpu_only_machine_is_refused_at_compile(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = tiny_model(ARCHS[0][1]).to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"bfloat16 on the CPU.*model.float\(\)"):
        mf.compile(model, MIXED, min_sparse_len=256)
    mf.compile(model.float(), MIXED, min_sparse_len=256)  # what the message says works
    ids = torch.randint(1, 128, (1, SEQ))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
