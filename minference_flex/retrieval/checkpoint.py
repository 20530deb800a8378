"""Training checkpoints: the model, the optimizer state, where the schedule stands.

A checkpoint directory (written by `save`, read by `load`) holds:
- the model as `save_pretrained` writes it: config.json, generation_config.json and
  model.safetensors (the fp32 master weights);
- `optimizer-00.pt`: the optimizer's state dict (AdamW: fp32 moments and step counts per
  parameter), in one file by default; with `save(..., max_shard_bytes=N)` split by parameter
  into `optimizer-00.pt`, `optimizer-01.pt`, ... of at most N bytes of tensor data each (a
  parameter whose state alone is larger gets a file of its own), for storage or transfers that
  limit file sizes. Shard 0 also holds the param groups; `load` reads either. Absent once the
  schedule is done;
- `train_state.json`: where the schedule stands, with the RNG states (`capture_rng`);
- `train_log.json`: the training log of every call so far.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import random

import torch

STATE_FILE = "train_state.json"
LOG_FILE = "train_log.json"
_SHARD = "optimizer-{:02d}.pt"


def shard_optimizer_state(state: dict, limit: int | None = None) -> list[dict]:
    """Split an optimizer `state_dict()` into shards by parameter, in parameter order, each
    holding at most `limit` bytes of tensors (a parameter whose state alone is larger gets a
    shard of its own); None: one shard. Shard 0 also holds "param_groups"."""
    shards: list[dict] = [{"state": {}}]
    size = 0
    for index, entry in state["state"].items():
        nbytes = sum(t.numel() * t.element_size() for t in entry.values() if torch.is_tensor(t))
        if limit is not None and size and size + nbytes > limit:
            shards.append({"state": {}})
            size = 0
        shards[-1]["state"][index] = entry
        size += nbytes
    shards[0]["param_groups"] = state["param_groups"]
    return shards


def merge_optimizer_shards(shards: list[dict]) -> dict:
    """The optimizer `state_dict()` that `shard_optimizer_state` split."""
    state = {}
    for shard in shards:
        state.update(shard["state"])
    return {"state": state, "param_groups": shards[0]["param_groups"]}


def capture_rng(rng: random.Random) -> dict:
    """JSON-able states of `rng`, torch's CPU generator and (where present) the CUDA ones."""
    def encode(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    version, internal, gauss = rng.getstate()
    cuda = [encode(t) for t in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"python": [version, list(internal), gauss], "torch": encode(torch.get_rng_state()), "cuda": cuda}


def restore_rng(rng: random.Random, saved: dict) -> None:
    """Set the generators `capture_rng` saved (the CUDA ones only where as many devices exist)."""
    def decode(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    version, internal, gauss = saved["python"]
    rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(decode(saved["torch"]))
    if saved["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(saved["cuda"]):
        torch.cuda.set_rng_state_all([decode(s) for s in saved["cuda"]])


def save(out_dir: str, model, optimizer_state: dict | None, train_state: dict, log: dict,
         max_shard_bytes: int | None = None) -> list[str]:
    """Write a checkpoint (see the module docstring) to `out_dir`; no optimizer shards when
    `optimizer_state` is None. The optimizer state goes into one file, or with `max_shard_bytes`
    into shards of at most that many bytes of tensor data each. Shards of an earlier checkpoint
    there are removed. Returns the paths written."""
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be None or >= 1, got {max_shard_bytes}")
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "optimizer-*.pt")):
        os.remove(stale)
    model.save_pretrained(out_dir)
    paths = [os.path.join(out_dir, name) for name in ("config.json", "generation_config.json", "model.safetensors")]
    shards = [] if optimizer_state is None else shard_optimizer_state(optimizer_state, max_shard_bytes)
    for i, shard in enumerate(shards):
        paths.append(os.path.join(out_dir, _SHARD.format(i)))
        torch.save(shard, paths[-1])
    for name, payload in ((LOG_FILE, log), (STATE_FILE, {**train_state, "optimizer_shards": len(shards)})):
        paths.append(os.path.join(out_dir, name))
        with open(paths[-1], "w") as f:
            json.dump(payload, f, indent=1)
    return [p for p in paths if os.path.exists(p)]


def read_train_state(path: str) -> dict:
    """The train_state.json of the checkpoint in `path`."""
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.exists(state_file):
        raise FileNotFoundError(f"no training checkpoint in {path}: {STATE_FILE} is missing")
    with open(state_file) as f:
        return json.load(f)


def load(path: str) -> tuple[dict | None, dict, dict]:
    """(optimizer state dict or None, train state, log) of the checkpoint in `path`; its model
    loads as any saved model (`save_pretrained`'s files)."""
    train_state = read_train_state(path)
    with open(os.path.join(path, LOG_FILE)) as f:
        log = json.load(f)
    count = train_state["optimizer_shards"]
    shards = [torch.load(os.path.join(path, _SHARD.format(i)), map_location="cpu") for i in range(count)]
    return merge_optimizer_shards(shards) if shards else None, train_state, log
