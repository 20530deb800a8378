"""`minference_flex.compile(model)`: sparse pre-fill for Hugging Face causal LMs.

The model keeps its own code: an attention function is registered with transformers'
`AttentionInterface` (and a padding-only mask function with `AttentionMaskInterface`, so no
S x S mask is ever built) and selected with `set_attn_implementation`. accelerate's device
hooks stay intact. Each attention module carries its layer's plan; pre-fill of long prompts
goes sparse, in one call or in chunks over a KV cache (`generate(..., prefill_chunk_size=N)`,
a manual loop over a `DynamicCache`, a second prompt on a cached context): the chunk's
queries are the last q_len of the kv_len cached positions. Everything else (short prompts,
short chunks, decode steps) runs dense: `minference_flex::dense_causal_attention` for a
no-grad call (cuDNN row chunks past 32K tokens), else SDPA. A layer whose sliding window cuts
keys runs that window (A-shape without sinks) instead of either; soft-capping and attention
sinks, which no kernel here implements, raise. Every call emits its
`patterns.events.AttentionCall` (what `metrics.tile_count.count_tiles` counts).

Training: a forward in training mode with autograd recording runs the same sparse patterns
(every op has a backward; see `minference_flex.ops.attention`), unless `Options.sparse_training`
is False, which sends it dense (SDPA). Every pattern keeps each row's diagonal or first key
(the estimator always keeps offsets 0..99 and keys 0..29, block-sparse the diagonal tile,
A-shape budgets are never both 0), so no loss sees a row without keys. Dropout is not
supported. Activation checkpointing recomputes a layer's patterns from its own q and k,
which gives the same indices.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from typing import Any

import torch

from custom_ops.dense_causal import MASK_ELEMENTS, dense_causal_attention_op

from minference_flex.ops import checks
from minference_flex.patch import layout
from minference_flex.patterns.config import A_SHAPE, ConfigSource, PatternConfig, load_pattern_config
from minference_flex.patterns.prefill import LayerPlan, sparse_prefill
from minference_flex.patterns import events

ATTENTION_NAME = "minference_flex"
_PLAN_ATTR = "_minference_flex_plan"
_STATE_ATTR = "_minference_flex_state"


@dataclasses.dataclass(frozen=True)
class Options:
    """Options of `minference_flex.compile`.

    min_sparse_len: key length (cached plus new positions) from which pre-fill goes sparse;
        shorter prompts run dense. Default 16384: below it the sparse kernels gain little
        (at 32K on H100 a (3500, 100) head takes 0.38x and A-shape 0.35x of dense).
    min_chunk_len: query length from which a call goes sparse (chunked pre-fill: the chunk);
        shorter chunks and every decode step run dense. Default 1024 (a min_sparse_len below
        it lowers it too: a whole prompt of min_sparse_len tokens goes sparse).
    starting_layer: layers before it stay dense.
    dense_fallback: vertical-slash heads whose estimated index is near dense run dense
        attention (see `DENSE_FALLBACK_FRACTION`).
    last_q: queries that probe the attention for vertical-slash estimation.
    block_size: tile size of the vertical-slash and block-sparse kernels.
    sparse_training: a training forward (module in training mode, autograd recording) runs
        the sparse patterns, differentiably; False runs it dense (SDPA).
    exact_masks: vertical-slash heads attend through their exact mask, built from the same
        indices, instead of the Triton kernel (`minference_flex.ops.exact_masks`): the kernel's
        outputs up to rounding, at about dense cost; the evaluation path on a CPU, where Triton
        runs in its interpreter. A-shape and block-sparse run FlexAttention either way.
    """

    min_sparse_len: int = 16384
    min_chunk_len: int = 1024
    starting_layer: int = 0
    dense_fallback: bool = True
    last_q: int = 64
    block_size: int = 64
    sparse_training: bool = True
    exact_masks: bool = False

    def __post_init__(self) -> None:
        checks.check_nonnegative_int("min_sparse_len", self.min_sparse_len, minimum=1)
        checks.check_nonnegative_int("min_chunk_len", self.min_chunk_len, minimum=1)
        checks.check_nonnegative_int("starting_layer", self.starting_layer)
        checks.check_nonnegative_int("last_q", self.last_q, minimum=1)
        checks.check_block_size(self.block_size)
        for name in ("dense_fallback", "sparse_training", "exact_masks"):
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
    the dense op for a no-grad call without padding, else SDPA."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if events.listening():
        events.emit(events.AttentionCall(events.DENSE, query, key, tuple(range(query.shape[1]))))
    gqa = query.shape[1] != key.shape[1]
    if padding is None and q_len > 1 and not torch.is_grad_enabled():
        # the op runs long prompts and chunks in row chunks of cuDNN calls (faster), with no
        # [q_len, kv_len] mask; with gradients SDPA's own autograd is cheaper (the op's
        # backward recomputes the forward)
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


def _goes_sparse(q_len: int, kv_len: int, options: Options) -> bool:
    """kv_len >= min_sparse_len and q_len >= min_chunk_len (or >= min_sparse_len, if smaller:
    a whole prompt that is long enough always goes sparse)."""
    return kv_len >= options.min_sparse_len and q_len >= min(options.min_chunk_len, options.min_sparse_len)


@functools.cache
def _window_plan(heads: int, window: int) -> LayerPlan:
    """A layer's own sliding window as a plan: query p attends key j iff 0 <= p - j < window
    (transformers' semantics), which is A-shape without sink keys, on every head."""
    return LayerPlan((A_SHAPE,) * heads, (0,) * heads, (window,) * heads)


def _attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: LayerPlan | None, scale: float,
    options: Options, window: int | None = None,
) -> torch.Tensor:
    """Unpadded rows: a sliding window that cuts keys (`window`) runs as such; else the
    layer's sparse patterns where `_goes_sparse`, else dense."""
    if window is not None and key.shape[2] > window:
        return sparse_prefill(query, key, value, _window_plan(query.shape[1], window), scale,
                              exact_masks=options.exact_masks)
    if plan is not None and _goes_sparse(query.shape[2], key.shape[2], options):
        return sparse_prefill(query, key, value, plan, scale, options.last_q, options.block_size,
                              options.dense_fallback, options.exact_masks)
    return _dense(query, key, value, None, scale)


def _per_row(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding: torch.Tensor, plan: LayerPlan | None,
    scale: float, options: Options, window: int | None = None,
) -> torch.Tensor:
    """Padded batch: each row's real tokens (one contiguous run of keys, left or right
    padding) run alone, so no padded key is ever attended; padded query rows give 0. The
    queries are the last q_len of the kv_len positions; row b's real queries are those inside
    its run, and they see the run's keys up to the last of them."""
    out = torch.zeros_like(query)
    q_len, kv_len = query.shape[2], key.shape[2]
    first_query = kv_len - q_len
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
        start, stop = max(first, first_query), first + length
        if stop <= start:
            continue
        rows = slice(start - first_query, stop - first_query)
        q = query[b : b + 1, :, rows]
        k, v = (t[b : b + 1, :, first:stop] for t in (key, value))
        out[b : b + 1, :, rows] = _attend(q, k, v, plan, scale, options, window)
    return out


def minference_attention(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function (arguments: `_attention_of_layer`); the events its
    calls emit name the module's layer."""
    if events.listening():
        with events.in_layer(getattr(module, "layer_idx", None)):
            return _attention_of_layer(module, *args, **kwargs)
    return _attention_of_layer(module, *args, **kwargs)


def _attention_of_layer(
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
    for name, what in (("softcap", "attention logit soft-capping"), ("s_aux", "attention sinks (s_aux)")):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"minference_flex attention does not implement {what}, which layer {module.layer_idx} of this "
                f"model uses ({name}={kwargs[name] if name == 'softcap' else 'a tensor'}): its results would be "
                f"wrong; run this model without minference_flex.compile"
            )
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"minference_flex attention takes the padding mask [batch, kv_len] that its mask function makes "
            f"from a 2-D attention_mask, got a {attention_mask.dim()}-D mask {tuple(attention_mask.shape)}: custom "
            f"4-D masks (packed sequences, prefix-LM) are not supported; pass attention_mask as [batch, seq] "
            f"of 1/0, or minference_flex.restore(model) for custom masks"
        )
    window = kwargs.get("sliding_window")
    if dropout and module.training:
        raise ValueError(
            f"minference_flex attention has no dropout, but this model trains with attention dropout "
            f"{dropout}; set config.attention_dropout = 0.0 before training, or call model.eval()"
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len > kv_len:
        raise ValueError(f"minference_flex attention got {q_len} queries for {kv_len} keys: the queries must be "
                         f"the last q_len of the key positions (the cache is updated before attention)")
    training = module.training and torch.is_grad_enabled()
    if (
        state is None
        or plan is None
        or module.layer_idx < state.options.starting_layer
        or (training and not state.options.sparse_training)
    ):
        plan = None
    if not query.device == key.device == value.device:
        raise ValueError(
            f"minference_flex attention of layer {module.layer_idx} got query on {query.device}, key on "
            f"{key.device}, value on {value.device}: keep each attention module on one device (see "
            f"minference_flex.patch.layout)"
        )
    if plan is not None and len(plan.kinds) != query.shape[1]:
        raise ValueError(
            f"minference_flex attention of layer {module.layer_idx} got {query.shape[1]} query heads but its "
            f"pattern config has {len(plan.kinds)}: the model's heads changed after compile (tensor "
            f"parallelism slices them, which is not supported); call minference_flex.compile on the model as "
            f"it runs, without tp_plan"
        )
    if window is not None and kv_len > window:  # the window cuts keys: the layer's own attention
        options = state.options if state is not None else Options()
        if attention_mask is None:
            out = _attend(query, key, value, None, scale, options, window)
        else:
            out = _per_row(query, key, value, attention_mask, None, scale, options, window)
    elif attention_mask is None:
        if state is None:
            out = _dense(query, key, value, None, scale)
        else:
            out = _attend(query, key, value, plan, scale, state.options)
    elif plan is not None and _goes_sparse(q_len, kv_len, state.options):
        out = _per_row(query, key, value, attention_mask, plan, scale, state.options)
    elif state is not None and q_len * kv_len > MASK_ELEMENTS and not torch.is_grad_enabled():
        # a long padded dense call: row by row through the dense op, with no [q_len, kv_len] mask
        out = _per_row(query, key, value, attention_mask, None, scale, state.options)
    else:
        out = _dense(query, key, value, attention_mask, scale)
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
        **options: fields of `Options` (min_sparse_len, min_chunk_len, starting_layer,
            dense_fallback, last_q, block_size, sparse_training).

    Returns:
        the same model, patched in place; `minference_flex.restore(model)` undoes it. Call
        before `torch.compile(model)`, and before `accelerator.prepare(model)`.

    A model spread over devices by a device map (`from_pretrained(..., device_map="auto")`,
    `accelerate.dispatch_model`, CPU or disk offload included) runs each layer's patterns on
    the device its attention executes on. Raises ValueError for tensor parallelism and for
    a device map that splits one layer's attention, TypeError for a DDP/FSDP wrapper (see
    `minference_flex.patch.layout`).
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
    layout.check_not_wrapped(model)
    num_layers, num_heads = attention_model_shape(model, "minference_flex.compile")
    layout.check_not_tensor_parallel(model)
    config = model.config
    modules = _attention_modules(model)
    if len(modules) != num_layers:
        raise ValueError(
            f"found {len(modules)} attention modules with a layer_idx but the config has {num_layers} "
            f"layers: {type(model).__name__} is not a supported layout"
        )
    bidirectional = [m.layer_idx for m in modules if getattr(m, "is_causal", True) is False]
    if bidirectional:
        raise ValueError(
            f"{type(model).__name__}'s attention is bidirectional (is_causal=False in layers "
            f"{', '.join(map(str, bidirectional[:4]))}{', ...' if len(bidirectional) > 4 else ''}); "
            f"minference_flex's patterns are the causal pre-fill of decoder LMs: use it on a causal LM"
        )
    layout.check_attention_on_one_device(modules)
    _check_cpu_dtype(model)
    if opts.starting_layer >= num_layers:
        warnings.warn(f"minference_flex: starting_layer={opts.starting_layer} but the model has {num_layers} layers: "
                      f"every layer stays dense", stacklevel=2)
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


def _check_cpu_dtype(model: Any) -> None:
    """Refuse at compile what can never run: a model on the CPU in a dtype the CPU kernels lack,
    on a machine without CUDA (with CUDA it may still move to the GPU before its first forward)."""
    if torch.cuda.is_available():
        return
    param = next(iter(model.parameters()), None)
    if param is not None and param.dtype not in checks.CPU_DTYPES and param.dtype.is_floating_point:
        names = ", ".join(str(d) for d in checks.CPU_DTYPES)
        raise TypeError(f"minference_flex.compile: the model is {param.dtype} on the CPU, and this machine has no "
                        f"CUDA GPU; the CPU kernels run {names}: load it with dtype=torch.float32 or call model.float()")


def cache_keyword(model: Any) -> str:
    """The keyword that `model`'s forward and `generate` take a KV cache by: "cache" from
    transformers 5.24 on, "past_key_values" before (5.24 to 5.39 still take the old name,
    with a FutureWarning)."""
    forward = getattr(model, "_orig_mod", model).forward  # through torch.compile's wrapper
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


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
