"""accelerate on CPU: data-parallel evaluation in two processes, models dispatched by a device
map, and the errors for layouts minference_flex does not run (tensor parallelism, one layer's
attention split across devices, a DDP wrapper)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import minference_flex as mf
from minference_flex.patch import hf
from minference_flex.evaluation.evaluate import EvalSpec, build_table
from tests.helpers import REPO_ROOT  # noqa: E402
from tests.models import tiny_llama_config  # noqa: E402

REPO = REPO_ROOT
EVAL_ARGS = ["--lengths", "256", "384", "--tasks", "passkey", "needle", "kv", "--samples", "3",
             "--methods", "dense", "default", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_two_process_eval_writes_the_one_process_table(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _run([sys.executable, "-m", "minference_flex", "eval", *EVAL_ARGS, "--out", str(one)])
    # `accelerate launch --cpu` starts one process unless MPI is set up; the torchrun launcher
    # (--multi_gpu) starts two, which join over gloo on the CPU
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(_free_port()), "-m", "minference_flex", "eval", *EVAL_ARGS,
          "--out", str(two)])
    single, parallel = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["processes"], parallel["processes"]) == (1, 2)
    assert parallel["rows"] == single["rows"]
    assert parallel["recall"] == single["recall"]
    assert len(single["rows"]) == 2 * 3 * 2 and all(r["samples"] == 3 for r in single["rows"])
    accuracy = {r["task"]: r["accuracy"] for r in single["rows"] if r["method"] == "dense" and r["S"] == 256}
    assert len(set(accuracy.values())) > 1, "tasks of different accuracy make a mixed-up gather visible"


@pytest.mark.slow
def test_ddp_training_step_of_a_patched_model_runs_in_two_processes(tmp_path):
    out = tmp_path / "ddp.json"
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(_free_port()), "perf/accelerate_train_step.py", "--device", "cpu",
          "--seq-len", "300", "--steps", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["params_agree"] is True
    losses = [[s["loss"] for s in p["steps"]] for p in result["per_process"]]
    assert len(losses) == 2 and losses[0] != losses[1], "each process trains on its own batch"


def _record(length, task, sample, hit):
    recall = {"minference_flex default": [0.5, 1.0]} if sample == 0 else None
    return {"S": length, "task": task, "sample": sample, "recall": recall,
            "hits": {"dense": True, "minference_flex default": hit}}


def test_build_table_is_independent_of_record_order():
    spec = EvalSpec((256, 384), ("passkey", "kv"), 2, ("dense", "default"))
    records = [_record(n, t, i, (n + i) % 3 == 0 and t == "kv") for n in (256, 384) for t in ("passkey", "kv")
               for i in range(2)]
    methods = ["dense", "minference_flex default"]
    rows, recall = build_table(records, spec, methods)
    assert build_table(records[::-1], spec, methods) == (rows, recall)
    assert [(r["S"], r["task"], r["method"]) for r in rows][:3] == [
        (256, "passkey", "dense"), (256, "passkey", "minference_flex default"), (256, "kv", "dense")]
    kv_384 = next(r for r in rows if (r["S"], r["task"], r["method"]) == (384, "kv", "minference_flex default"))
    assert kv_384["accuracy"] == 50.0 and kv_384["mean_recall"] == 0.75
    assert len(recall) == 4


def test_eval_spec_and_cli_reject_bad_arguments(capsys):
    with pytest.raises(ValueError, match="methods must be some of dense, searched, searched-chunked, default"):
        EvalSpec(methods=("sparse",))
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        EvalSpec(samples=0)
    from minference_flex.cli.main import main

    with pytest.raises(SystemExit):
        main(["eval", "--samples", "0", "--out", "/tmp/never.json"])
    assert "--samples must be an int >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--out", "/no/such/dir/table.json"])
    assert "--out /no/such/dir/table.json: cannot write a file there" in capsys.readouterr().err


HEADS, LAYERS, SEQ = 4, 2, 384


def _tiny_llama():
    import transformers

    config = tiny_llama_config(num_hidden_layers=LAYERS, num_attention_heads=HEADS)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


# vertical-slash only (Triton's interpreter on CPU, nothing for Inductor to compile); budgets
# small enough that the sparse output differs from dense
VS = [{str(h): ["vertical_and_slash", 30, 100, 0] for h in range(HEADS)} for _ in range(LAYERS)]
CPU_AND_DISK = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.mark.parametrize("how", ["dispatch_model", "from_pretrained"])
def test_model_dispatched_by_a_device_map_runs_patched_like_the_undispatched_one(tmp_path, how):
    import accelerate
    import transformers

    model = _tiny_llama()
    ids = torch.randint(1, 128, (1, SEQ))
    with torch.no_grad():
        dense = model(ids).logits
        mf.compile(model, VS, min_sparse_len=256, dense_fallback=False)
        patched = model(ids).logits
    assert (patched - dense).abs().max() > 1e-3, "the sparse path must run"
    if how == "dispatch_model":
        mf.restore(model)
        dispatched = accelerate.dispatch_model(model, CPU_AND_DISK, main_device="cpu",
                                               offload_dir=str(tmp_path / "off"))
    else:
        model.save_pretrained(tmp_path / "model")
        dispatched = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "model", device_map=CPU_AND_DISK, offload_folder=str(tmp_path / "off")).eval()
    offloaded = dispatched.model.layers[1].self_attn.q_proj
    assert offloaded.weight.device.type == "meta" and hasattr(offloaded, "_hf_hook"), "layer 1 waits on disk"
    mf.compile(dispatched, VS, min_sparse_len=256, dense_fallback=False)
    with torch.no_grad():
        torch.testing.assert_close(dispatched(ids).logits, patched, rtol=1e-5, atol=1e-5)


def test_input_device_follows_offloaded_embeddings(tmp_path):
    import accelerate
    from accelerate.hooks import AlignDevicesHook

    from minference_flex.patch.layout import input_device

    model = _tiny_llama()
    assert input_device(model) == torch.device("cpu")
    on_disk = dict(CPU_AND_DISK, **{"model.embed_tokens": "disk"})
    dispatched = accelerate.dispatch_model(model, on_disk, main_device="cpu", offload_dir=str(tmp_path / "off"))
    assert dispatched.model.embed_tokens.weight.device.type == "meta"
    assert input_device(dispatched) == torch.device("cpu")
    dispatched.model.embed_tokens._hf_hook = AlignDevicesHook(execution_device=1)
    assert input_device(dispatched) == torch.device("cuda", 1)


def test_device_map_splitting_one_attention_is_refused():
    from accelerate.hooks import AlignDevicesHook

    model = _tiny_llama()
    # what dispatch_model leaves for {"...layers.1.self_attn.k_proj": 1, ...}: a hook that runs
    # k_proj on cuda:1 while q_proj runs where its weights are
    model.model.layers[1].self_attn.k_proj._hf_hook = AlignDevicesHook(execution_device=1)
    with pytest.raises(ValueError, match=r"splits layer 1's attention \(q_proj on cpu, k_proj on cuda:1"):
        mf.compile(model, VS)
    assert model.config._attn_implementation != "minference_flex"


def test_tensor_parallel_models_are_refused_by_name():
    model = _tiny_llama()
    model._tp_size = 2
    with pytest.raises(ValueError, match=r"tensor parallel \(tp_size=2\).*load the model without tp_plan"):
        mf.compile(model, VS)
    model._tp_size = None

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        attention = model.model.layers[0].self_attn
        mesh = init_device_mesh("cpu", (2,))
        local = attention.q_proj.weight.detach()[: attention.q_proj.weight.shape[0] // 2]
        attention.q_proj.weight = torch.nn.Parameter(DTensor.from_local(local, mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"tensor parallel \(DTensor weights\)"):
            mf.compile(model, VS)
    finally:
        dist.destroy_process_group()


def test_heads_sliced_after_compile_are_refused_at_run_time():
    model = _tiny_llama()
    mf.compile(model, VS, min_sparse_len=256, dense_fallback=False)
    attention = model.model.layers[0].self_attn
    q = torch.randn(1, HEADS // 2, SEQ, 32)
    k = v = torch.randn(1, 1, SEQ, 32)
    with pytest.raises(ValueError, match="got 2 query heads but its pattern config has 4"):
        hf.minference_attention(attention, q, k, v, None)


def test_data_parallel_wrapper_is_refused_with_the_fix():
    model = _tiny_llama()
    with pytest.raises(TypeError, match=r"DataParallel wrapping LlamaForCausalLM.*before accelerator.prepare"):
        mf.compile(torch.nn.DataParallel(model), VS)


def test_each_device_gets_its_own_flex_compile_cache():
    from minference_flex.ops.flex import _compiled_flex, _flex_on_blocks, per_device_copy

    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert _compiled_flex(cuda0) is _compiled_flex(cuda0)
    codes = {per_device_copy(_flex_on_blocks, d).__code__ for d in (cuda0, cuda1, torch.device("cpu"))}
    assert len(codes) == 3 and _flex_on_blocks.__code__ not in codes

    def affine(x):
        return x * 2 + 1

    # dynamo's budget is per code object: with a budget of one variant, two devices' variants
    # fit only in two copies (conftest turns hitting the limit into an error)
    # (torch's own config.patch: monkeypatching the config module deletes the entry on undo
    # with pytest 9.2, since config entries are not module attributes)
    with torch._dynamo.config.patch(recompile_limit=1):
        first, second = (torch.compile(per_device_copy(affine, d), backend="eager") for d in (cuda0, cuda1))
        first(torch.ones(3))
        assert torch.equal(second(torch.ones(3, dtype=torch.float64)), torch.full((3,), 3.0, dtype=torch.float64))
        shared = torch.compile(affine, backend="eager")
        shared(torch.ones(3))
        with pytest.raises(Exception, match="recompile_limit"):
            shared(torch.ones(3, dtype=torch.float64))
