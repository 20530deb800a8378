"""`minference_flex.compile(model)`: sparse pre-fill for Hugging Face causal LMs.

The model keeps its own code: an attention function is registered with transformers'
`AttentionInterface` (and a padding-only mask function with `AttentionMaskInterface`, so no
S x S mask is ever built) and selected with `set_attn_implementation`. accelerate's device
hooks stay intact. Each attention module carries its layer's plan; pre-fill of long prompts
goes sparse, everything else (short prompts, decode steps, chunked pre-fill) runs dense:
SDPA, or `minference_flex::dense_causal_attention` for a no-grad pre-fill (cuDNN row chunks
past 32K tokens).

Training: a forward in training mode with autograd recording runs the same sparse patterns
(every op has a backward; see `minference_flex.attention`), unless `Options.sparse_training`
is False, which sends it dense (SDPA). Every pattern keeps each row's diagonal or first key
(the estimator always keeps offsets 0..99 and keys 0..29, block-sparse the diagonal tile,
A-shape budgets are never both 0), so no loss sees a row without keys. Dropout is not
supported. Activation checkpointing recomputes a layer's patterns from its own q and k,
which gives the same indices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from custom_ops.dense_causal import dense_causal_attention_op

from . import _checks
from .config import ConfigSource, PatternConfig, load_pattern_config
from .prefill import LayerPlan, sparse_prefill

ATTENTION_NAME = "minference_flex"
_PLAN_ATTR = "_minference_flex_plan"
_STATE_ATTR = "_minference_flex_state"


@dataclasses.dataclass(frozen=True)
class Options:
    """Options of `minference_flex.compile`.

    min_sparse_len: query length from which pre-fill goes sparse; shorter prompts and every
        decode step run dense SDPA. Default 16384: below it the sparse kernels gain little
        (at 32K on H100 a (3500, 100) head takes 0.38x and A-shape 0.35x of dense).
    starting_layer: layers before it stay dense.
    dense_fallback: vertical-slash heads whose estimated index is near dense run dense
        attention (see `DENSE_FALLBACK_FRACTION`).
    last_q: queries that probe the attention for vertical-slash estimation.
    block_size: tile size of the vertical-slash and block-sparse kernels.
    sparse_training: a training forward (module in training mode, autograd recording) runs
        the sparse patterns, differentiably; False runs it dense (SDPA).
    """

    min_sparse_len: int = 16384
    starting_layer: int = 0
    dense_fallback: bool = True
    last_q: int = 64
    block_size: int = 64
    sparse_training: bool = True

    def __post_init__(self) -> None:
        _checks.check_nonnegative_int("min_sparse_len", self.min_sparse_len, minimum=1)
        _checks.check_nonnegative_int("starting_layer", self.starting_layer)
        _checks.check_nonnegative_int("last_q", self.last_q, minimum=1)
        _checks.check_block_size(self.block_size)
        for name in ("dense_fallback", "sparse_training"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")


@dataclasses.dataclass
class _State:
    options: Options
    config: PatternConfig
    original_attn: str


def _padding_only_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """Mask function: the 2D padding mask [B, kv_len] bool, or None when nothing is padded.

    Causality is the attention function's job, so no [q_len, kv_len] mask is ever built.
    """
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:].bool()
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask


def _dense(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Dense causal attention for any q_len <= kv_len (queries are the last q_len positions):
    the dense op for a no-grad pre-fill without padding, else SDPA."""
    q_len, kv_len = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    if padding is None and q_len == kv_len > 1 and not torch.is_grad_enabled():
        # the op runs long prompts in row chunks of cuDNN calls (faster); it has no backward
        return dense_causal_attention_op(query, key, value, scale)
    if padding is None and q_len in (1, kv_len):
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=q_len > 1, scale=scale, enable_gqa=gqa
        )
    rows = torch.arange(kv_len - q_len, kv_len, device=query.device)
    mask = torch.arange(kv_len, device=query.device)[None, :] <= rows[:, None]
    if padding is not None:
        mask = mask[None, None] & padding[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scale, enable_gqa=gqa
    ).nan_to_num(0.0)  # fully padded query rows


def _sparse_per_row(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding: torch.Tensor, plan: LayerPlan,
    scale: float, options: Options,
) -> torch.Tensor:
    """Padded batch: each row's real tokens (one contiguous run, left or right padding) run
    alone, so no padded key is ever attended; padded query rows give 0."""
    out = torch.zeros_like(query)
    lengths = padding.sum(-1).tolist()
    firsts = padding.int().argmax(-1).tolist()
    for b, (first, length) in enumerate(zip(firsts, lengths)):
        if length == 0:
            continue
        if not bool(padding[b, first : first + length].all()):
            raise ValueError(
                "minference_flex: sparse pre-fill supports left or right padding only (each row's "
                "tokens contiguous); this attention_mask has holes. Pass rows without holes, or "
                "batch size 1."
            )
        run = slice(first, first + length)
        rows = [t[b : b + 1, :, run] for t in (query, key, value)]
        if length >= options.min_sparse_len:
            out[b : b + 1, :, run] = sparse_prefill(*rows, plan, scale, options.last_q, options.block_size, options.dense_fallback)
        else:
            out[b : b + 1, :, run] = _dense(*rows, None, scale)
    return out


def minference_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, H, q_len, D], key/value [B, Hkv, kv_len, D]
    (after the cache update); returns ([B, q_len, H, D], None)."""
    plan: LayerPlan | None = getattr(module, _PLAN_ATTR, None)
    state: _State | None = getattr(module, _STATE_ATTR, None)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if dropout and module.training:
        raise ValueError(
            f"minference_flex attention has no dropout, but this model trains with attention dropout "
            f"{dropout}; set config.attention_dropout = 0.0 before training, or call model.eval()"
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    training = module.training and torch.is_grad_enabled()
    sparse = (
        plan is not None
        and state is not None
        and q_len == kv_len
        and q_len >= state.options.min_sparse_len
        and module.layer_idx >= state.options.starting_layer
        and (state.options.sparse_training or not training)
    )
    if not sparse:
        out = _dense(query, key, value, attention_mask, scale)
    elif attention_mask is not None:
        out = _sparse_per_row(query, key, value, attention_mask, plan, scale, state.options)
    else:
        opts = state.options
        out = sparse_prefill(query, key, value, plan, scale, opts.last_q, opts.block_size, opts.dense_fallback)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, minference_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _padding_only_mask)


def attention_model_shape(model: Any, purpose: str) -> tuple[int, int]:
    """(layers, query heads) of a Hugging Face model whose attention goes through
    `AttentionInterface`; TypeError / ValueError naming `purpose` otherwise."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"{purpose} expects a Hugging Face PreTrainedModel, got {type(model).__name__}")
    if not (getattr(model, "_supports_attention_backend", False) and model._can_set_attn_implementation()):
        raise ValueError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
            f"so {purpose} cannot reach its attention without copying model code"
        )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text_config.num_hidden_layers, text_config.num_attention_heads


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [
        m
        for m in model.modules()
        if "Attention" in type(m).__name__ and isinstance(getattr(m, "layer_idx", None), int)
    ]


def compile(model: Any, pattern_config: ConfigSource = None, **options: Any) -> Any:
    """Make a Hugging Face causal LM pre-fill long prompts with per-head sparse attention.

    Args:
        model: a transformers model whose attention goes through `AttentionInterface`
            (Llama, Mistral, Qwen2/2.5, Phi-3, GLM-4, Yi, ...).
        pattern_config: MInference's per-head file: a path, a parsed list, or None to use the
            config shipped for the model's name or path (`model.config._name_or_path`);
            unknown models get vertical_and_slash (1000, 6096) on every head and a warning.
        **options: fields of `Options` (min_sparse_len, starting_layer, dense_fallback,
            last_q, block_size, sparse_training).

    Returns:
        the same model, patched in place; `minference_flex.restore(model)` undoes it. Call
        before `torch.compile(model)`.
    """
    try:
        opts = Options(**options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            names = ", ".join(f.name for f in dataclasses.fields(Options))
            raise TypeError(f"{exc}; minference_flex.compile options are: {names}") from None
        raise
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        raise ValueError("call minference_flex.compile(model) before torch.compile(model), not after")
    num_layers, num_heads = attention_model_shape(model, "minference_flex.compile")
    config = model.config
    modules = _attention_modules(model)
    if len(modules) != num_layers:
        raise ValueError(
            f"found {len(modules)} attention modules with a layer_idx but the config has {num_layers} "
            f"layers: {type(model).__name__} is not a supported layout"
        )
    patterns = load_pattern_config(pattern_config, num_layers, num_heads, getattr(config, "_name_or_path", ""))
    state = getattr(model, _STATE_ATTR, None)
    if state is not None:
        original = state.original_attn
    elif config._attn_implementation != ATTENTION_NAME:
        original = config._attn_implementation
    else:  # a config saved while patched: the model's own default
        original = "sdpa"
    state = _State(opts, patterns, original)
    _register()
    for module in modules:
        setattr(module, _PLAN_ATTR, LayerPlan.from_patterns(patterns[module.layer_idx]))
        setattr(module, _STATE_ATTR, state)
    setattr(model, _STATE_ATTR, state)
    model.set_attn_implementation(ATTENTION_NAME)
    return model


def restore(model: Any) -> Any:
    """Undo `compile`: the model's original attention implementation, no plans attached."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError("this model was not patched by minference_flex.compile")
    for module in _attention_modules(model):
        for attr in (_PLAN_ATTR, _STATE_ATTR):
            if hasattr(module, attr):
                delattr(module, attr)
    delattr(model, _STATE_ATTR)
    model.set_attn_implementation(state.original_attn)
    return model
