"""Patched models dispatched by accelerate device maps on CUDA (run: pytest -m gpu): CPU-offloaded
layers on one GPU, layers across two GPUs, and a device map that splits one attention."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import minference_flex as mf
from minference_flex.patch.hf import cache_keyword
from tests.helpers import REPO_ROOT  # noqa: E402
from tests.models import tiny_llama_config  # noqa: E402

pytestmark = pytest.mark.gpu

LAYERS, HEADS, SEQ = 4, 4, 4099
MIXED = [
    {"0": ["vertical_and_slash", 30, 100, 0], "1": ["vertical_and_slash", 60, 120, 0],
     "2": ["stream_llm", 4, 64, 0], "3": ["block_sparse", 0, 0, 0]}
    for _ in range(LAYERS)
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def _cpu_model():
    torch.manual_seed(0)
    config = tiny_llama_config(hidden_size=512, intermediate_size=1024, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, max_position_embeddings=16384)
    return transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()


def _device_map(layer_devices: list) -> dict:
    first, last = layer_devices[0], layer_devices[-1]
    out = {"model.embed_tokens": first, "model.rotary_emb": first}
    out.update({f"model.layers.{i}": d for i, d in enumerate(layer_devices)})
    out.update({"model.norm": last, "lm_head": last})
    return out


def _patched_logits_on_one_gpu(model, ids) -> torch.Tensor:
    reference = copy.deepcopy(model).to("cuda:0")
    mf.compile(reference, MIXED, min_sparse_len=1024)
    with torch.no_grad():
        return reference(ids.to("cuda:0")).logits.float().cpu()


def test_layers_offloaded_to_cpu_run_patched_like_the_model_on_the_gpu():
    import accelerate

    model = _cpu_model()
    ids = torch.randint(1, 128, (1, SEQ))
    expected = _patched_logits_on_one_gpu(model, ids)
    # layers 2 and 3 wait in host memory and run on cuda:0 (accelerate's CPU offload)
    dispatched = accelerate.dispatch_model(model, _device_map([0, 0, "cpu", "cpu"]), main_device=0)
    assert dispatched.model.layers[3].self_attn.q_proj.weight.device.type == "meta"
    mf.compile(dispatched, MIXED, min_sparse_len=1024)
    with torch.no_grad():
        got = dispatched(ids.to("cuda:0")).logits.float().cpu()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    out = dispatched.generate(ids[:, :2100].to("cuda:0"), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, 2103)


def test_max_memory_with_a_cpu_entry_offloads_and_runs_patched(tmp_path):
    model = _cpu_model()
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(1, 128, (1, SEQ))
    expected = _patched_logits_on_one_gpu(model, ids)
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "model", dtype=torch.bfloat16, device_map="auto",
        max_memory={0: int(2.5 * layer_bytes) + 2**20, "cpu": 2**30},
    ).eval()
    assert "cpu" in set(loaded.hf_device_map.values()) and 0 in set(loaded.hf_device_map.values())
    mf.compile(loaded, MIXED, min_sparse_len=1024)
    with torch.no_grad():
        got = loaded(ids.to("cuda:0")).logits.float().cpu()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@two_gpus
def test_layers_across_two_gpus_run_patched_like_one_gpu():
    import accelerate

    model = _cpu_model()
    ids = torch.randint(1, 128, (1, SEQ))
    expected = _patched_logits_on_one_gpu(model, ids)
    dispatched = accelerate.dispatch_model(model, _device_map([0, 0, 1, 1]))
    assert dispatched.model.layers[3].self_attn.q_proj.weight.device == torch.device("cuda:1")
    mf.compile(dispatched, MIXED, min_sparse_len=1024)
    with torch.cuda.device(0), torch.no_grad():  # the current device is not the late layers'
        got = dispatched(ids.to("cuda:0")).logits.float().cpu()
        again = dispatched(ids.to("cuda:0")).logits.float().cpu()  # masks cached per device
    # another card of the same kind: equal up to bf16 rounding should cuBLAS pick other kernels
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


@two_gpus
def test_device_map_that_splits_one_attention_across_gpus_is_refused():
    import accelerate

    model = _cpu_model()
    device_map = _device_map([0, 0, 0, 0])
    del device_map["model.layers.1"]
    for name, _ in model.model.layers[1].named_children():
        device_map[f"model.layers.1.{name}"] = 0
    del device_map["model.layers.1.self_attn"]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        device_map[f"model.layers.1.self_attn.{name}"] = 1 if name == "k_proj" else 0
    dispatched = accelerate.dispatch_model(model, device_map)
    with pytest.raises(ValueError, match=r"splits layer 1's attention \(q_proj on cuda:0, k_proj on cuda:1"):
        mf.compile(dispatched, MIXED)


def _chunked_last_logits(model, ids, chunk: int = 2048) -> torch.Tensor:
    """Last-position logits of a pre-fill in chunks over a DynamicCache offloaded to the host."""
    cache = transformers.DynamicCache(config=model.config, offloading=True)
    with torch.no_grad():
        for a in range(0, ids.shape[1], chunk):
            out = model(ids[:, a:a + chunk], **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)
    return out.logits.float().cpu()


@pytest.mark.parametrize("layer_devices", [
    pytest.param([0, 0, "cpu", "cpu"], id="cpu-offloaded-layers"),
    pytest.param([0, 0, 1, 1], id="two-gpus", marks=two_gpus),
])
def test_chunked_prefill_with_an_offloaded_cache_on_a_dispatched_model(layer_devices):
    import accelerate

    model = _cpu_model()
    ids = torch.randint(1, 128, (1, 6000))
    reference = copy.deepcopy(model).to("cuda:0")
    mf.compile(reference, MIXED, min_sparse_len=1024, min_chunk_len=1024)
    expected = _chunked_last_logits(reference, ids.to("cuda:0"))
    dispatched = accelerate.dispatch_model(model, _device_map(layer_devices), main_device=0)
    mf.compile(dispatched, MIXED, min_sparse_len=1024, min_chunk_len=1024)
    got = _chunked_last_logits(dispatched, ids.to("cuda:0"))
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


def _launch_two(args: list[str], tmp_path) -> None:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = REPO_ROOT
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(port), *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@two_gpus
def test_data_parallel_eval_on_two_gpus_writes_the_one_process_table(tmp_path):
    import json

    from minference_flex.cli.main import main

    args = ["--lengths", "2048", "--tasks", "passkey", "needle", "--samples", "4",
            "--methods", "dense", "default", "a-shape"]
    main(["eval", *args, "--out", str(tmp_path / "one.json")])
    _launch_two(["-m", "minference_flex", "eval", *args, "--out", str(tmp_path / "two.json")], tmp_path)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["processes"] == 2
    assert two["rows"] == one["rows"]
    for a, b in zip(one["recall"], two["recall"]):  # recall is a float sum: one GPU against another
        assert a["S"] == b["S"] and a["task"] == b["task"]
        for name, values in a["per_layer"].items():
            assert b["per_layer"][name] == pytest.approx(values, abs=1e-4)


@two_gpus
def test_ddp_training_step_on_two_gpus(tmp_path):
    import json

    out = tmp_path / "ddp.json"
    _launch_two(["perf/accelerate_train_step.py", "--seq-len", "4096", "--min-sparse-len", "1024",
                 "--steps", "2", "--out", str(out)], tmp_path)
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["device"] == "cuda" and result["params_agree"] is True
