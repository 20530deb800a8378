"""minference_flex: dynamic sparse long-context pre-filling for torch.compile.

Kernel API (q [B, H, S, D], k/v [B, Hkv, S, D], causal):
`streaming_forward` (A-shape), `vertical_slash_sparse_attention`, `block_sparse_attention`,
`estimate_vertical_slash`, `dynamic_vertical_slash_attention` (estimate then attend) and
`dense_attention`. Models: `compile(model)` / `restore(model)` for Hugging Face causal LMs;
`search(model)` finds their per-head patterns offline (`attention_recall` is its measure).
`HostOffloadedCache(model.config)` keeps the KV cache in host memory between the chunks of a
long pre-fill.
"""

from custom_ops import _interpreter  # noqa: F401  (sets up Triton on CPU before anything imports it)

from minference_flex.ops.attention import (
    DENSE_FALLBACK_FRACTION,
    block_sparse_attention,
    dense_attention,
    dynamic_vertical_slash_attention,
    streaming_forward,
    vertical_slash_sparse_attention,
)
from minference_flex.patterns.config import HeadPattern, PatternConfigError, load_pattern_config, save_pattern_config
from minference_flex.ops.estimate import estimate_vertical_slash, select_block_sparse_tiles, vertical_slash_counts
from minference_flex.patch.hf import Options, compile, restore
from minference_flex.patch.offload import HostOffloadedCache
from minference_flex.metrics.recall import attention_recall
from minference_flex.pattern_search.search import DEFAULT_CANDIDATES, SearchResult, search

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CANDIDATES",
    "SearchResult",
    "attention_recall",
    "search",
    "DENSE_FALLBACK_FRACTION",
    "HeadPattern",
    "Options",
    "PatternConfigError",
    "compile",
    "load_pattern_config",
    "HostOffloadedCache",
    "restore",
    "save_pattern_config",
    "block_sparse_attention",
    "dense_attention",
    "dynamic_vertical_slash_attention",
    "estimate_vertical_slash",
    "select_block_sparse_tiles",
    "streaming_forward",
    "vertical_slash_counts",
    "vertical_slash_sparse_attention",
]
