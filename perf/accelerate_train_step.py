"""Training steps of a patched model under accelerate's `Accelerator` (DDP across processes).

The model is patched with `minference_flex.compile` before `accelerator.prepare` wraps it;
each process draws its own random batch (data parallel), runs forward, `accelerator.backward`
and an SGD step. After the steps the parameters of every process are compared (DDP keeps them
equal). The main process writes per-step seconds, the loss of each process, the peak GPU
memory of each process and whether the parameters agree.

Sparse or dense attention in the training forward (`--sparse-training`):
- on: the sparse patterns with their backward (`Options.sparse_training`, from the training
  work; refused where this minference_flex has no such option);
- off: dense attention in training (`sparse_training=False`; where that option does not exist,
  min_sparse_len above --seq-len, which sends every call dense);
- auto (default): on where the option exists and the device is a GPU, else off (FlexAttention
  has no backward on CPU).

Usage:
  accelerate launch --num_processes 2 perf/accelerate_train_step.py --shape llama-1b --seq-len 32768 \\
      --loss-tokens 1024 --checkpointing --steps 3 --out perf/results/ddp_step.json   # 2 GPUs
  accelerate launch --multi_gpu --num_processes 2 perf/accelerate_train_step.py --device cpu  # 2 CPU processes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minference_flex as mf  # noqa: E402
from minference_flex.patch.layout import leave_process_group  # noqa: E402

SHAPES = {
    # hidden, layers, heads, kv heads, MLP, vocab
    "tiny": (128, 2, 4, 2, 256, 128),
    "llama-1b": (2048, 16, 32, 8, 8192, 128256),  # the Llama-3.2-1B shape
}


def build_model(shape: str, seed: int = 0) -> torch.nn.Module:
    """Random-weight Llama of `shape` (see SHAPES) on the CPU, fp32, SDPA attention."""
    import transformers

    hidden, layers, heads, kv_heads, mlp, vocab = SHAPES[shape]
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, rope_theta=500000.0,
        max_position_embeddings=1 << 20, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def training_options(mode: str, seq_len: int, min_sparse_len: int, on_gpu: bool) -> tuple[dict, str]:
    """compile options for --sparse-training `mode`, and a line saying what runs."""
    has_option = "sparse_training" in {f.name for f in dataclasses.fields(mf.Options)}
    if mode == "auto":
        mode = "on" if has_option and on_gpu else "off"
    if mode == "on":
        if not has_option:
            raise ValueError("--sparse-training on needs minference_flex.Options.sparse_training (the sparse "
                             "backward), which this version lacks; use --sparse-training off")
        return ({"min_sparse_len": min_sparse_len, "sparse_training": True},
                f"sparse training forward (calls from {min_sparse_len} keys on)")
    if has_option:
        return ({"min_sparse_len": min_sparse_len, "sparse_training": False},
                "dense training forward (sparse_training=False)")
    return ({"min_sparse_len": seq_len + 1},
            "dense training forward (no Options.sparse_training here: min_sparse_len above the sequence)")


def next_token_loss(model: torch.nn.Module, ids: torch.Tensor, loss_tokens: int) -> torch.Tensor:
    """Mean next-token cross-entropy of ids [B, S + 1] (inputs ids[:, :-1]) over the last
    `loss_tokens` positions, or every position when it is 0."""
    keep = loss_tokens or ids.shape[1] - 1
    logits = model(input_ids=ids[:, :-1], logits_to_keep=keep, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, -keep:].flatten())


def params_agree(model: torch.nn.Module, accelerator) -> bool:
    """True iff every process holds the same parameters (a float64 checksum per tensor)."""
    from accelerate.utils import gather_object

    sums = [p.detach().double().sum().item() for p in accelerator.unwrap_model(model).parameters()]
    every = gather_object([sums])
    return all(s == every[0] for s in every)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sample")
    parser.add_argument("--batch", type=int, default=1, help="samples per process and step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--config", default=None, help="pattern config (default: MInference's default pattern)")
    parser.add_argument("--min-sparse-len", type=int, default=256, help="minference_flex option")
    parser.add_argument("--sparse-training", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--loss-tokens", type=int, default=0,
                        help="next-token loss on the last N positions only (their logits alone are built: "
                        "[S, vocab] logits of a 128K vocabulary at 32K tokens are 8 GiB); 0: every position")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: each process's accelerate device")
    parser.add_argument("--out", default=None, help="JSON written by the main process")
    args = parser.parse_args(argv)
    if args.seq_len < 2 or args.steps < 1 or args.batch < 1:
        parser.error(f"--seq-len must be >= 2, --steps and --batch >= 1; "
                     f"got {args.seq_len}, {args.steps}, {args.batch}")
    if not 0 <= args.loss_tokens <= args.seq_len:
        parser.error(f"--loss-tokens must be in [0, --seq-len], got {args.loss_tokens}")
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == "cpu" or not torch.cuda.is_available())
    on_gpu = accelerator.device.type == "cuda"
    try:
        options, what = training_options(args.sparse_training, args.seq_len, args.min_sparse_len, on_gpu)
    except ValueError as exc:
        parser.error(str(exc))
    model = build_model(args.shape)
    if on_gpu:
        model = model.to(torch.bfloat16)
    with warnings.catch_warnings():  # the "no shipped config" warning of a random model
        warnings.simplefilter("ignore")
        mf.compile(model, args.config, **options)
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.is_main_process:
        print(f"{accelerator.num_processes} processes on {accelerator.device.type}, {args.shape}, "
              f"{args.seq_len} tokens x {args.batch}: {what}", flush=True)
    vocab = SHAPES[args.shape][5]
    gen = torch.Generator().manual_seed(1000 + accelerator.process_index)  # each process its own data
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    steps = []
    for _ in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch, args.seq_len + 1), generator=gen).to(accelerator.device)
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        loss = next_token_loss(model, ids, args.loss_tokens)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if on_gpu:
            torch.cuda.synchronize(accelerator.device)
        seconds = time.perf_counter() - start
        if not torch.isfinite(loss):
            raise RuntimeError(f"process {accelerator.process_index}: non-finite loss {loss.item()}")
        steps.append({"seconds": seconds, "loss": loss.item()})
    from accelerate.utils import gather_object

    peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**30 if on_gpu else None
    per_process = gather_object([{"process": accelerator.process_index, "steps": steps, "peak_gib": peak}])
    agree = params_agree(model, accelerator)
    result = {"args": vars(args), "processes": accelerator.num_processes, "device": accelerator.device.type,
              "attention": what, "per_process": per_process, "params_agree": agree}
    if accelerator.is_main_process:
        for p in per_process:
            print(f"process {p['process']}: " + ", ".join(f"{s['seconds']:.2f} s (loss {s['loss']:.3f})"
                                                          for s in p["steps"])
                  + (f", peak {p['peak_gib']:.1f} GiB" if p["peak_gib"] is not None else ""))
        print(f"parameters equal on every process after the steps: {agree}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
            print(f"wrote {args.out}")
    if not agree:
        raise RuntimeError("the processes' parameters differ after the DDP steps")
    del model, optimizer
    accelerator.free_memory()  # the DDP wrapper's reducer holds the process group
    leave_process_group(accelerator)
    return result


if __name__ == "__main__":
    main()
