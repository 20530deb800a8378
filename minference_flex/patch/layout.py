"""Which multi-device layouts `minference_flex.compile` runs, and clear errors for the others.

Runs: a model on one device, or spread over devices whole attention layers at a time by a
device map (`from_pretrained(..., device_map="auto")`, `accelerate.dispatch_model`), with or
without CPU/disk offload. Each attention call then gets q, k and v on one device, the one its
layer executes on, and every estimator, mask and kernel follows q's device. Data-parallel
copies (DDP, `accelerate launch`) run too, patched before `accelerator.prepare`.

Refused, by name, with the fix:
- tensor parallelism (`from_pretrained(..., tp_plan=...)`, DTensor weights): each process
  holds a slice of every layer's heads, and the per-head patterns are not sliced with them;
- a device map that splits one layer's attention (q_proj on one device, k_proj on another);
- a model wrapped for data parallelism (DDP / FSDP / DataParallel) handed to `compile`.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

_WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel", "DataParallel")


def leave_process_group(state: Any) -> None:
    """End an `accelerate launch` process's work: wait for every process, then destroy the group.

    `state` is an accelerate `PartialState`, `AcceleratorState` or `Accelerator`. Call it once the
    work succeeded, not after a failure (the other processes may wait in a collective). Left to
    the interpreter's exit, a gloo group's threads can abort a finished process ("terminate
    called without an active exception"); waiting first keeps any process from tearing its group
    down while another still gathers, and the collection drops finished work handles (they hold
    tensors) while Python is alive. Drop DDP-wrapped models first (`Accelerator.free_memory`):
    their reducers hold the group.
    """
    state.wait_for_everyone()
    gc.collect()
    getattr(state, "state", state).destroy_process_group()


def check_not_wrapped(model: Any) -> None:
    """TypeError naming the fix when `model` is a data-parallel wrapper around a model."""
    name = type(model).__name__
    inner = getattr(model, "module", None)
    if name in _WRAPPERS and isinstance(inner, torch.nn.Module):
        raise TypeError(
            f"minference_flex.compile got a {name} wrapping {type(inner).__name__}: patch the model itself, "
            f"before wrapping it: call minference_flex.compile(model) before accelerator.prepare(model) "
            f"(or pass accelerator.unwrap_model(model), which patches it in place)"
        )


def _has_dtensor_weights(model: torch.nn.Module) -> bool:
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def check_not_tensor_parallel(model: torch.nn.Module) -> None:
    """ValueError when tensor parallelism was applied to `model` (transformers records its
    degree in `_tp_size`; its DTensor path also leaves DTensor weights)."""
    tp_size = getattr(model, "_tp_size", None) or 1
    if tp_size > 1 or _has_dtensor_weights(model):
        what = f"tp_size={tp_size}" if tp_size > 1 else "DTensor weights"
        raise ValueError(
            f"minference_flex.compile: {type(model).__name__} is tensor parallel ({what}); each process holds "
            f"a slice of every layer's heads, and the per-head sparse patterns are not sliced with them. "
            f"Tensor parallelism is not supported: load the model without tp_plan; to spread it over "
            f"several GPUs use device_map=\"auto\" (whole layers per GPU), which minference_flex runs"
        )


def _hook_device(module: torch.nn.Module) -> torch.device | None:
    """The execution device of an accelerate hook on `module` (an AlignDevicesHook, alone or
    inside a SequentialHook), or None."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", (hook,)):
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return None


def _own_tensor_device(module: torch.nn.Module) -> torch.device | None:
    for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if t.device.type != "meta":
            return t.device
    return None


def execution_devices(attention: torch.nn.Module) -> dict[str, torch.device]:
    """Where each submodule of an attention module that holds weights runs: {qualified name
    inside the module ("" for itself): device}. The nearest accelerate hook between the
    submodule and the attention module decides (offloaded weights wait on "meta" and run on
    the hook's device); without one, the device of the submodule's own weights. Submodules
    whose weights are on "meta" with no hook are left out."""
    hooked: dict[str, torch.device] = {}
    out: dict[str, torch.device] = {}
    for name, sub in attention.named_modules():
        device = _hook_device(sub)
        if device is not None:
            hooked[name] = device
        if not any(True for _ in sub.parameters(recurse=False)):
            continue
        parts = name.split(".") if name else []
        ancestors = [".".join(parts[:i]) for i in range(len(parts), -1, -1)]
        device = next((hooked[a] for a in ancestors if a in hooked), None) or _own_tensor_device(sub)
        if device is not None:
            out[name] = device
    return out


def check_attention_on_one_device(modules: list[torch.nn.Module]) -> None:
    """ValueError naming the layer, its submodules' devices and the fix when one attention
    module's weights run on more than one device."""
    for module in modules:
        devices = execution_devices(module)
        if len(set(devices.values())) > 1:
            where = ", ".join(f"{name or 'self'} on {device}" for name, device in devices.items())
            raise ValueError(
                f"minference_flex.compile: the device map splits layer {module.layer_idx}'s attention "
                f"({where}); its q, k and v must be computed on one device. Keep each attention module "
                f"on one device: map whole decoder layers (device_map=\"auto\" does, through the model's "
                f"_no_split_modules), or pass no_split_module_classes=model._no_split_modules to "
                f"infer_auto_device_map"
            )


def input_device(model: torch.nn.Module) -> torch.device:
    """Where `model`'s input ids belong: the device its input embeddings run on (their
    accelerate hook's execution device, else their weights' device, else the model's hook's;
    the first parameter's device for a model without `get_input_embeddings`)."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if embeddings is None:
        return next(model.parameters()).device
    device = _hook_device(embeddings) or _own_tensor_device(embeddings) or _hook_device(model)
    return device if device is not None else next(model.parameters()).device
