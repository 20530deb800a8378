"""Training through a patched tiny Hugging Face model on CPU (fp32): parameter gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import minference_flex as mf

HEADS, KV_HEADS, LAYERS, SEQ = 4, 2, 2, 600
CONFIG = transformers.LlamaConfig(
    vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS,
    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=4096,
)


def _model(**overrides):
    torch.manual_seed(0)
    config = copy.deepcopy(CONFIG)
    for name, value in overrides.items():
        setattr(config, name, value)
    return transformers.AutoModelForCausalLM.from_config(config).train()


def _layers(*heads):
    """One layer config, the given [pattern, a, b] per head, for every layer."""
    return [{str(h): [*p, 0] for h, p in enumerate(heads)} for _ in range(LAYERS)]


FULL = {  # budgets that cover every causal key at SEQ tokens
    "vertical_slash": _layers(*[["vertical_and_slash", 10**6, 10**6]] * HEADS),
    "a_shape": _layers(*[["stream_llm", 0, 10**6]] * HEADS),
    "block_sparse": _layers(*[["block_sparse", 0, 0]] * HEADS),  # top 100 of 10 tiles
    "mixed": _layers(["vertical_and_slash", 10**6, 10**6], ["stream_llm", 3, 10**6],
                     ["block_sparse", 0, 0], ["vertical_and_slash", 10**6, 10**6]),
}
SMALL = {
    "vertical_slash": _layers(["vertical_and_slash", 30, 100], ["vertical_and_slash", 60, 120],
                              ["vertical_and_slash", 30, 100], ["vertical_and_slash", 40, 150]),
    "flex": _layers(["stream_llm", 4, 64], ["block_sparse", 0, 0], ["stream_llm", 16, 128], ["block_sparse", 0, 0]),
    "mixed": _layers(["vertical_and_slash", 30, 100], ["vertical_and_slash", 60, 120],
                     ["stream_llm", 4, 64], ["block_sparse", 0, 0]),
}


def _grads(model, ids, runner=None):
    """(loss, parameter gradients by name) of one step of `runner` (default: model itself,
    else e.g. its torch.compile wrapper)."""
    model.zero_grad(set_to_none=True)
    loss = (model if runner is None else runner)(ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _max_rel_diff(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-12)).item() for n in b)


@pytest.mark.parametrize("name", list(FULL))
def test_full_budgets_give_the_unpatched_gradients(name):
    model = _model()
    ids = torch.randint(1, 128, (2, SEQ))
    loss, dense = _grads(model, ids)
    mf.compile(model, FULL[name], min_sparse_len=256, dense_fallback=False)
    calls = _count_sparse_calls(model)
    patched_loss, patched = _grads(model, ids)
    assert calls[0] == LAYERS, "the sparse path was not taken"
    torch.testing.assert_close(patched_loss, loss, rtol=1e-5, atol=1e-5)
    assert _max_rel_diff(patched, dense) < 1e-4


@pytest.mark.parametrize("name", list(SMALL))
def test_small_budgets_change_the_gradients_and_keep_them_finite(name):
    model = _model()
    ids = torch.randint(1, 128, (1, SEQ))
    _, dense = _grads(model, ids)
    mf.compile(model, SMALL[name], min_sparse_len=256, dense_fallback=False)
    _, sparse = _grads(model, ids)
    assert all(torch.isfinite(g).all() for g in sparse.values())
    assert _max_rel_diff(sparse, dense) > 1e-3, "small budgets must change the gradients (sparse path taken)"
    # sparse_training=False: the same model trains dense again
    mf.compile(model, SMALL[name], min_sparse_len=256, sparse_training=False)
    _, dense_again = _grads(model, ids)
    assert _max_rel_diff(dense_again, dense) < 1e-5


def _count_sparse_calls(model):
    """Count sparse_prefill calls (one per layer per forward) through a wrapper."""
    from minference_flex import hf

    calls = [0]
    real = hf.sparse_prefill

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    hf.sparse_prefill = counting
    return calls


@pytest.fixture(autouse=True)
def _restore_wrapper():
    """Undo `_count_sparse_calls` after each test."""
    from minference_flex import hf

    real = hf.sparse_prefill
    yield
    hf.sparse_prefill = real


def test_eval_and_no_grad_forwards_are_unchanged_by_sparse_training():
    model = _model().eval()
    ids = torch.randint(1, 128, (1, SEQ))
    mf.compile(model, SMALL["mixed"], min_sparse_len=256)
    with torch.no_grad():
        on = model(ids).logits
    mf.compile(model, SMALL["mixed"], min_sparse_len=256, sparse_training=False)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, on, rtol=0, atol=0)


def test_dropout_in_training_is_a_clear_error():
    model = _model(attention_dropout=0.1)
    mf.compile(model, SMALL["mixed"], min_sparse_len=256)
    ids = torch.randint(1, 128, (1, SEQ))
    with pytest.raises(ValueError, match="attention_dropout"):
        model(ids, labels=ids)
    model.eval()  # dropout is off in eval mode: no error
    with torch.no_grad():
        model(ids)


def test_bad_sparse_training_option_is_named():
    with pytest.raises(TypeError, match="sparse_training"):
        mf.compile(_model(), SMALL["mixed"], sparse_training="yes")


@pytest.mark.parametrize("name", ["mixed"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    model = _model()
    mf.compile(model, SMALL[name], min_sparse_len=256)
    ids = torch.randint(1, 128, (1, SEQ))
    _, plain = _grads(model, ids)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    _, checkpointed = _grads(model, ids)
    assert _max_rel_diff(checkpointed, plain) < 1e-5


@pytest.mark.parametrize("name", ["vertical_slash", "mixed"])
def test_compiled_training_step_gives_the_eager_gradients_without_recompiling(name):
    """torch.compile(model) (fullgraph: no graph break anywhere in the forward, attention
    included) runs forward, loss and backward with the eager gradients; a second step at the
    same length with other tokens compiles nothing new."""
    torch._dynamo.reset()  # earlier tests' lengths would make this length dynamic
    model = _model()
    mf.compile(model, SMALL[name], min_sparse_len=256, dense_fallback=False)
    ids = torch.randint(1, 128, (1, SEQ))
    _, eager = _grads(model, ids)
    compiled = torch.compile(model, fullgraph=True)
    _, got = _grads(model, ids, compiled)
    assert _max_rel_diff(got, eager) < 1e-4
    before = dict(torch._dynamo.utils.counters["stats"])
    _grads(model, torch.randint(1, 128, (1, SEQ)), compiled)
    assert dict(torch._dynamo.utils.counters["stats"]) == before, "the second step recompiled"


def test_padded_batch_trains_like_the_unpatched_model():
    """A left-padded batch (each row's real tokens run alone) with full budgets: the loss on
    the real tokens gives the unpatched model's parameter gradients."""
    model = _model()
    ids = torch.randint(1, 128, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :50] = 0
    labels = ids.masked_fill(mask == 0, -100)

    def step():
        model.zero_grad(set_to_none=True)
        model(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    dense = step()
    mf.compile(model, FULL["mixed"], min_sparse_len=256, dense_fallback=False)
    calls = _count_sparse_calls(model)
    patched = step()
    assert calls[0] == 2 * LAYERS, "each row of each layer runs sparse"
    assert _max_rel_diff(patched, dense) < 1e-4
