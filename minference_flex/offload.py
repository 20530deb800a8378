"""Bounded host memory for a KV cache offloaded to the CPU (`cache_implementation="offloaded"`).

transformers offloads each layer's K/V with `.to("cpu", non_blocking=True)`, which takes pinned
memory from PyTorch's caching host allocator. That allocator keeps every freed block for reuse,
and in a chunked pre-fill each chunk's K/V are larger than the last, so the old blocks are never
reused: a 512K-token pre-fill of the Llama-3-8B shape (a 64 GiB cache) was killed for memory
on a 128 GB host. Releasing the cached blocks after every decoder layer kept host memory at
66 GB there.
"""

from __future__ import annotations

from typing import Any

import torch


def empty_host_cache() -> None:
    """Return the caching host allocator's free pinned blocks to the system (nothing is pinned
    without a GPU)."""
    if not torch.cuda.is_available():
        return
    if hasattr(torch, "accelerator") and hasattr(torch.accelerator, "empty_host_cache"):
        torch.accelerator.empty_host_cache()
    elif hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()
    else:
        raise RuntimeError(f"torch {torch.__version__} has no way to empty its pinned host memory cache")


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


class HostCacheRelease:
    """Forward hooks that empty the pinned host memory cache after each decoder layer; `remove()`
    takes them off. Made by `release_host_cache_after_each_layer`."""

    def __init__(self, handles: list[Any]):
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def release_host_cache_after_each_layer(model: torch.nn.Module) -> HostCacheRelease:
    """Empty PyTorch's pinned host memory cache after every decoder layer of `model`, so that a
    pre-fill with an offloaded KV cache needs about the cache's size in host memory (see the
    module). Each release synchronises the GPU once per layer. Returns the hooks' handle."""
    layers = _decoder_layers(model)
    if not layers:
        raise ValueError(f"found no decoder layers (modules named *DecoderLayer) in {type(model).__name__}")
    empty_host_cache()  # fails early where torch cannot do it
    return HostCacheRelease([layer.register_forward_hook(lambda *_: empty_host_cache()) for layer in layers])
