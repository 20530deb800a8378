"""Triton's interpreter on machines without a GPU: switched on before triton.language loads.

Every kernel module imports this first. Triton has no CPU backend, so without a GPU its
interpreter (TRITON_INTERPRET=1) is the only way to run the kernels; it must be on before
triton.language is first imported (torch._dynamo and transformers import it).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def check_interpreter() -> None:
    """Raise a RuntimeError naming the fix when a kernel is launched on CPU tensors but
    triton.language was imported before the interpreter was switched on."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.standard.zeros, InterpretedFunction):
        raise RuntimeError(
            "minference_flex's Triton kernels run on CPU under Triton's interpreter, but "
            "triton.language was imported before TRITON_INTERPRET=1 was set; set it in the "
            "environment before starting Python (or import minference_flex before "
            "torch._dynamo / transformers)"
        )
