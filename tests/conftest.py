import os
import random

import torch

if not torch.cuda.is_available():
    # before anything imports triton.language: its library functions are bound at import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch._dynamo.config.fail_on_recompile_limit_hit = True
# the suite compiles many (dtype, head_dim, GQA, mask block) variants of one flex function
torch._dynamo.config.recompile_limit = 64


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on the device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Fresh random inputs every run; a failure prints the seed (set MF_SEED to replay it)."""
    seed = int(os.environ.get("MF_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    random.seed(seed)
    print(f"MF_SEED={seed}")
    yield


@pytest.fixture
def nan_empty(monkeypatch):
    """Kernel outputs start NaN-filled, so an output a kernel leaves unwritten fails."""
    from custom_ops.vertical_slash import kernel

    def poisoned(*args, **kwargs):
        return torch.full(*args[:1], float("nan"), **kwargs)

    monkeypatch.setattr(kernel, "_empty", poisoned)
    yield
