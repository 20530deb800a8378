"""Train the small retrieval model that the demo and the accuracy benchmark run on.

A Llama-architecture model (GQA, RoPE with a long-context base) learns the tasks of
`minference_flex.tasks` (passkey, needle, multi-key needle, key-value retrieval) with the loss on
the answer digits only, over a curriculum of growing lengths. Usage:

    python -m minference_flex.train --out DIR [--preset gpu|cpu] [--max-minutes M]

With `--sparse-attention [CONFIG]` the model trains (and evaluates) through the sparse
patterns (`minference_flex.compile`, whose ops all have a backward): every forward of at least
`--min-sparse-len` tokens runs each head's pattern from CONFIG (a pattern config file; by
default the one searched for the `--init` model, else MInference's default). `--init DIR`
fine-tunes a saved model (the shipped one: minference_flex/models/retrieval_llama) instead of
training from scratch, e.g. at long lengths:

    python -m minference_flex.train --init minference_flex/models/retrieval_llama --sparse-attention \
        --stages 8192:200:2 16384:100:1 --out DIR

Every `--eval-every` steps it greedy-decodes held-out samples (seeds disjoint from training)
and logs loss and exact-match accuracy per task; DIR gets the model (safetensors), its config
and `train_log.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from .retrieval_model import answer
from .tasks import TASKS, TOKENIZER, Sample, exact_match, make_sample

#: Held-out evaluation seeds start here; training draws seeds below it.
EVAL_SEED_BASE = 10**9


@dataclass
class Preset:
    """Model shape and curriculum: `stages` is a list of (length, steps, batch)."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 768
    rope_theta: float = 1_000_000.0
    lr: float = 2e-3
    lm_weight: float = 0.5
    #: share of steps after the first stage that replay an earlier stage's length and batch, so
    #: the model keeps what it learned on short prompts while it learns long ones
    replay: float = 0.3
    tasks: tuple = TASKS
    stages: list = field(default_factory=lambda: [(512, 600, 16), (2048, 300, 8)])


PRESETS = {
    # short prompts first: retrieval heads form far sooner at 128 tokens than at 512. Two tasks,
    # as in the cpu preset that learned both: with all four, 4 min on an H100 learned the pass
    # key only (perf/RESULTS.md, "Accuracy")
    "gpu": Preset(tasks=("passkey", "needle"),
                  stages=[(128, 2000, 64), (512, 2500, 32), (2048, 1000, 8), (8192, 300, 2), (16384, 200, 1)]),
    # the shipped model: `python -m minference_flex.train --out DIR --preset cpu --max-minutes 30
    # --eval-every 250 --eval-samples 10` (19 min on 2 CPU cores)
    "cpu": Preset(hidden=128, layers=4, heads=2, kv_heads=1, intermediate=384, lr=3e-3,
                  tasks=("passkey", "needle"), stages=[(128, 500, 32), (512, 250, 8), (2048, 100, 2)]),
    "smoke": Preset(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, stages=[(128, 4, 2), (192, 2, 2)]),
}


def build_model(preset: Preset, max_positions: int = 1 << 17):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(TOKENIZER), hidden_size=preset.hidden, intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers, num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads, head_dim=preset.hidden // preset.heads,
        rope_theta=preset.rope_theta, max_position_embeddings=max_positions,
        bos_token_id=TOKENIZER.bos_id, eos_token_id=TOKENIZER.eos_id, pad_token_id=TOKENIZER.pad_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def batch_of(samples: list[Sample], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids [B, L + A - 1] (prompt + answer minus its last digit), next-token targets
    [B, L + A - 1] and a bool mask of the answer positions. All samples share length and
    answer size."""
    ids = torch.tensor([s.prompt + s.answer for s in samples])
    on_answer = torch.zeros(ids.shape, dtype=torch.bool)
    on_answer[:, -len(samples[0].answer):] = True
    return ids[:, :-1].to(device), ids[:, 1:].to(device), on_answer[:, 1:].to(device)


def loss_of(logits: torch.Tensor, targets: torch.Tensor, on_answer: torch.Tensor, lm_weight: float) -> torch.Tensor:
    """Answer loss plus `lm_weight` x next-token loss over the whole context. The context term
    teaches copying early: each passkey and needle number appears twice, and the noise
    sentences repeat, so induction heads pay off before the answer loss alone finds them."""
    per_token = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return per_token[on_answer].mean() + lm_weight * per_token.mean()


def _train_samples(rng: random.Random, length: int, batch: int, tasks: tuple = TASKS) -> list[Sample]:
    task = rng.choice(tasks)  # one task per batch keeps answer lengths equal
    return [make_sample(task, length, rng.randrange(EVAL_SEED_BASE)) for _ in range(batch)]


def evaluate(
    model, length: int, per_task: int, tasks: tuple = TASKS, seed_base: int = EVAL_SEED_BASE
) -> dict[str, float]:
    """Exact-match accuracy per task on held-out samples of `length` tokens."""
    model.eval()
    scores = {}
    for task in tasks:
        hits = [exact_match(answer(model, s), s.answer) for s in
                (make_sample(task, length, seed_base + i) for i in range(per_task))]
        scores[task] = sum(hits) / len(hits)
    model.train()
    return scores


def load_for_training(path: str, device: str):
    """A saved LlamaForCausalLM in fp32 (the master weights; CUDA steps run under bf16
    autocast), for fine-tuning."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def train(preset: Preset, out_dir: str, device: str, max_minutes: float, eval_every: int, eval_samples: int,
          seed: int = 0, init: str | None = None, sparse_attention: str | None = None,
          min_sparse_len: int = 1024) -> dict:
    """Train (or with `init`, fine-tune the model saved there) on the preset's curriculum;
    with `sparse_attention` (a pattern config path, or "auto": the config searched for `init`,
    else MInference's default) through `minference_flex.compile`'s sparse patterns for every
    forward of at least `min_sparse_len` tokens. Saves the model and train_log.json in out_dir."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = build_model(preset).to(device) if init is None else load_for_training(init, device)
    if sparse_attention is not None:
        import minference_flex as mf

        from .retrieval_model import searched_config_path

        config = sparse_attention
        if config == "auto":
            config = searched_config_path(init) if init is not None else None
        mf.compile(model, config, min_sparse_len=min_sparse_len)
    opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=0.1)
    total = sum(steps for _, steps, _ in preset.stages)
    warmup = min(100, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return preset.lr * (step + 1) / warmup
        return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))

    autocast = torch.autocast("cuda", torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    log = {"preset": asdict(preset), "device": device, "steps": [], "evals": [], "init": init,
           "sparse_attention": None if sparse_attention is None else
           {"config": config if isinstance(config, str) else "default", "min_sparse_len": min_sparse_len}}
    start, step = time.time(), 0
    model.train()
    steps_so_far = 0
    for index, (length, steps, batch) in enumerate(preset.stages):
        # each stage ends at its cumulative share of the time budget, so a slow machine still
        # reaches the long stages (with fewer steps) and time a fast stage leaves passes on
        steps_so_far += steps
        stage_end = start + 60 * max_minutes * steps_so_far / total
        for _ in range(steps):
            if time.time() > stage_end:
                print(f"stage {length}: time share used up at step {step}", file=sys.stderr)
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            step_length, step_batch = length, batch
            if index and rng.random() < preset.replay:
                step_length, _, step_batch = preset.stages[rng.randrange(index)]
            ids, targets, on_answer = batch_of(
                _train_samples(rng, step_length, step_batch, preset.tasks), device)
            with autocast:
                logits = model(ids).logits
            loss = loss_of(logits, targets, on_answer, preset.lm_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 10 == 0:
                acc = (logits.argmax(-1)[on_answer] == targets[on_answer]).float().mean().item()
                entry = {"step": step, "length": step_length, "loss": loss.item(), "digit_acc": acc,
                         "minutes": (time.time() - start) / 60}
                log["steps"].append(entry)
                print(json.dumps(entry), file=sys.stderr, flush=True)
            if step % eval_every == 0:
                scores = evaluate(model, length, eval_samples, preset.tasks)
                log["evals"].append({"step": step, "length": length, **scores})
                print(json.dumps(log["evals"][-1]), file=sys.stderr, flush=True)
    model.eval()
    final = {}
    for length in sorted({s[0] for s in preset.stages}):
        final[length] = evaluate(model, length, eval_samples, preset.tasks)
        print(json.dumps({"final_eval_length": length, **final[length]}), file=sys.stderr, flush=True)
    log["final"] = final
    log["train_minutes"] = (time.time() - start) / 60
    log["steps_done"] = step
    os.makedirs(out_dir, exist_ok=True)
    if sparse_attention is not None:  # save the plain model (its config names its own attention)
        import minference_flex as mf

        mf.restore(model)
    model.generation_config.pad_token_id = TOKENIZER.pad_id
    model.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minference_flex.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the model and train_log.json")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: gpu on CUDA, else cpu")
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-minutes", type=float, default=8.0, help="training time budget, shared by the stages in proportion to their steps")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-samples", type=int, default=20, help="held-out samples per task and length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="train on these tasks only")
    parser.add_argument("--stages", nargs="+", default=None, metavar="LENGTH:STEPS:BATCH",
                        help="override the preset's curriculum")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--init", default=None, metavar="DIR", help="fine-tune the model saved in DIR")
    parser.add_argument("--sparse-attention", nargs="?", const="auto", default=None, metavar="CONFIG",
                        help="train through the sparse patterns of CONFIG (default: the config searched "
                             "for --init, else MInference's default)")
    parser.add_argument("--min-sparse-len", type=int, default=1024,
                        help="with --sparse-attention, the forwards of at least this many tokens go sparse")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset or ("gpu" if device.startswith("cuda") else "cpu")]
    if args.tasks:
        preset = replace(preset, tasks=tuple(args.tasks))
    if args.lr:
        preset = replace(preset, lr=args.lr)
    if args.stages:
        try:
            stages = [tuple(int(x) for x in st.split(":")) for st in args.stages]
            assert all(len(st) == 3 and min(st) > 0 for st in stages)
        except (ValueError, AssertionError):
            parser.error(f"--stages wants LENGTH:STEPS:BATCH with positive ints, got {args.stages}")
        preset = replace(preset, stages=stages)
    if args.max_minutes <= 0:
        parser.error(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.min_sparse_len < 1:
        parser.error(f"--min-sparse-len must be >= 1, got {args.min_sparse_len}")
    if args.init is not None and not os.path.exists(os.path.join(args.init, "config.json")):
        parser.error(f"--init {args.init}: no saved model there (config.json missing)")
    train(preset, args.out, device, args.max_minutes, args.eval_every, args.eval_samples, args.seed,
          args.init, args.sparse_attention, args.min_sparse_len)
    return 0


if __name__ == "__main__":
    sys.exit(main())
