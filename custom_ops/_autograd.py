"""Autograd helpers shared by the ops' backward formulas.

A `torch.library.custom_op` runs its implementation with the autograd dispatch keys excluded,
so a backward op that differentiates PyTorch code inside (the dense fallback recomputes SDPA
and takes its gradients) has to switch them back on for that block (`autograd_inside_op`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch._C import DispatchKey


@contextlib.contextmanager
def autograd_inside_op() -> Iterator[None]:
    """Record autograd inside a custom op's implementation: the thread's autograd keys are
    taken off the excluded set and grad mode is on until the block ends (a no-op outside)."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (DispatchKey.AutogradFunctionality, DispatchKey.ADInplaceOrView):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        with torch.enable_grad():
            yield


def needs_grad(*tensors: torch.Tensor) -> bool:
    """True when autograd records and one of `tensors` requires grad (the training path)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
