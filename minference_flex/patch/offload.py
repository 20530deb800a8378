"""A KV cache kept in host memory between chunks, for pre-fills whose cache outgrows the GPU.

`HostOffloadedCache(model.config)` is a transformers `DynamicCache` whose full-attention
layers keep their K/V in fixed blocks of pinned host memory while other layers run
(`HostBlockLayer`). Use it wherever transformers takes a cache:

    cache = mf.HostOffloadedCache(model.config)   # cache=cache from transformers 5.24 on:
    model.generate(ids, past_key_values=cache, prefill_chunk_size=32768, max_new_tokens=64)

Against transformers' own offloaded cache (`cache_implementation="offloaded"`), which copies a
layer's whole K/V to a new pinned tensor after every chunk:
- host memory is the cache's size: blocks are allocated once and filled in order. The
  transformers cache asks PyTorch's caching host allocator for a larger pinned tensor each
  chunk, and the allocator keeps every freed one: a 512K-token pre-fill of the Llama-3-8B
  shape (a 64 GiB cache) ran out of a 128 GB host;
- each chunk copies only its own tokens to the host. The whole prefix still comes back to the
  GPU once per chunk and layer, on a side stream one layer ahead, while the layer before runs.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: Bytes of one host block of keys (or values). PyTorch's pinned allocator rounds a request up
#: to a power of two: a block of whole tokens at most this size wastes less than one token.
BLOCK_BYTES = 32 << 20

_NO_BATCH_EDITS = (
    "HostOffloadedCache does not reorder or repeat its batch (beam or contrastive search): use "
    "greedy or sampled decoding with it, or a DynamicCache"
)


class HostBlockLayer(DynamicLayer):
    """One layer's K/V [B, Hkv, S, D]: on the layer's device while the layer runs, in blocks of
    host memory (pinned where the device is a GPU) in between.

    `keys`/`values` are device tensors when resident (after an update or a fetch) and None
    when offloaded; the host blocks hold every offloaded token either way.
    """

    def __init__(self) -> None:
        super().__init__()
        self._host: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._block_tokens = 0
        self._stored = 0  # tokens in the host blocks
        self._written: torch.cuda.Event | None = None  # after the last copy to the host
        self._fetched: torch.cuda.Event | None = None  # after a fetch on a side stream

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        bsz, heads, _, dim = key_states.shape
        self._block_shape = (bsz, heads, dim)
        self._dtype = key_states.dtype
        self._block_tokens = max(1, BLOCK_BYTES // (bsz * heads * dim * key_states.element_size()))

    @property
    def resident(self) -> bool:
        return self.keys is not None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.is_initialized:
            self._make_resident()
        return super().update(key_states, value_states, *args, **kwargs)

    def _make_resident(self) -> None:
        if not self.resident:  # nobody fetched it ahead: fetch on this stream
            self.fetch()
        if self._fetched is not None:  # fetched on a side stream, used on this one
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(self._fetched)
            # keeps the allocator from handing this memory back to the side stream too early
            self.keys.record_stream(stream)
            self.values.record_stream(stream)
            self._fetched = None

    def offload(self) -> None:
        """Copy the tokens not yet on the host into its blocks, then drop the device copy."""
        if not self.is_initialized or not self.resident:
            return
        length = self.keys.shape[-2]
        for states, blocks in zip((self.keys, self.values), self._host):
            self._write(states, blocks, length)
        self._stored = length
        if self.device.type == "cuda":
            self._written = torch.cuda.Event()
            self._written.record(torch.cuda.current_stream(self.device))
        self.keys = self.values = None

    def fetch(self, stream: torch.cuda.Stream | None = None) -> None:
        """Copy the stored tokens back to the layer's device: on `stream` (then the next update
        waits for it) or on the current stream."""
        if not self.is_initialized or self.resident:
            return
        if stream is None:
            self._copy_back()
            return
        with torch.cuda.stream(stream):
            if self._written is not None:
                stream.wait_event(self._written)
            self._copy_back()
            self._fetched = torch.cuda.Event()
            self._fetched.record(stream)

    def _copy_back(self) -> None:
        self.keys, self.values = (self._read(blocks) for blocks in self._host)

    def _write(self, states: torch.Tensor, blocks: list[torch.Tensor], length: int) -> None:
        """Append states[:, :, stored:length] to the token-major blocks [T, B, Hkv, D]: every
        copy is between contiguous memory (a strided copy to pinned memory is staged and
        synchronous in PyTorch), from one token-major device copy of the new tokens."""
        pinned = states.device.type == "cuda"
        new = states[:, :, self._stored : length].permute(2, 0, 1, 3).contiguous()
        position = self._stored
        while position < length:
            block, offset = divmod(position, self._block_tokens)
            if block == len(blocks):
                blocks.append(torch.empty(self._block_tokens, *self._block_shape, dtype=states.dtype, pin_memory=pinned))
            end = min(length, (block + 1) * self._block_tokens)
            rows = new[position - self._stored : end - self._stored]
            blocks[block][offset : offset + end - position].copy_(rows, non_blocking=pinned)
            position = end

    def _read(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The stored tokens on the device as a [B, Hkv, S, D] view of a token-major copy (the
        update's concatenation makes it contiguous)."""
        flat = torch.empty(self._stored, *self._block_shape, dtype=self._dtype, device=self.device)
        for block in range(-(-self._stored // self._block_tokens)):
            start = block * self._block_tokens
            end = min(self._stored, start + self._block_tokens)
            flat[start:end].copy_(blocks[block][: end - start], non_blocking=True)
        return flat.permute(1, 2, 0, 3)

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.keys.shape[-2] if self.resident else self._stored

    def crop(self, tokens_to_remove: int) -> None:
        """transformers' crop (its rule for the count: a negative count drops that many tokens),
        on the fetched K/V; the host blocks keep the tokens that remain."""
        if not self.is_initialized:
            return
        offloaded = not self.resident
        self._make_resident()
        super().crop(tokens_to_remove)
        self._stored = min(self._stored, self.keys.shape[-2])
        if offloaded:
            self.offload()

    def reset(self) -> None:
        self._host, self._stored, self._written, self._fetched = ([], []), 0, None, None
        super().reset()

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError(_NO_BATCH_EDITS)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError(_NO_BATCH_EDITS)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(_NO_BATCH_EDITS)


class HostOffloadedCache(DynamicCache):
    """A `DynamicCache` for `config` (the model's config) whose full-attention layers live in host
    memory between their turns (`HostBlockLayer`; sliding-window layers stay on the device).

    Each update stores the layer's new tokens, returns its whole K/V on the device, starts
    fetching the next offloaded layer on a side stream (on CUDA), and sends this layer back
    to the host. Host memory: the cache's size; device memory: about two layers' K/V.
    """

    def __init__(self, config) -> None:
        if config is None or not hasattr(config, "get_text_config"):
            raise ValueError(f"HostOffloadedCache needs the model's config (model.config), got {type(config).__name__}")
        super().__init__(config=config)
        self.layers = [HostBlockLayer() if type(layer) is DynamicLayer else layer for layer in self.layers]
        self._offloaded = [i for i, layer in enumerate(self.layers) if isinstance(layer, HostBlockLayer)]
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)
        self._fetch_after(layer_idx)
        layer = self.layers[layer_idx]
        if isinstance(layer, HostBlockLayer):
            layer.offload()
        return keys, values

    def _fetch_after(self, layer_idx: int) -> None:
        """Start copying the next offloaded layer (circling back to the first) to its device."""
        later = [i for i in self._offloaded if i > layer_idx] or self._offloaded
        if not later:
            return
        layer = self.layers[later[0]]
        if not layer.is_initialized or layer.resident or layer.device.type != "cuda":
            return
        if layer.device not in self._streams:
            self._streams[layer.device] = torch.cuda.Stream(layer.device)
        layer.fetch(self._streams[layer.device])
