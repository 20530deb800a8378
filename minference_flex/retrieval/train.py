"""Train the small retrieval model that the demo and the accuracy benchmark run on.

A Llama-architecture model (GQA, RoPE with a long-context base) learns the tasks of
`minference_flex.retrieval.tasks` (passkey, needle, multi-key needle, key-value retrieval) with the loss on
the answer digits only, over a curriculum of growing lengths. Usage:

    python -m minference_flex.retrieval.train --out DIR [--preset gpu|cpu|long] [--max-minutes M] [--resume CKPT]

The schedule (the preset's stages, or `--stages`) is fixed; `--max-minutes` is the budget of
this call. When the schedule is done or the budget is spent, DIR gets a checkpoint
(`minference_flex.retrieval.checkpoint`: the model as safetensors, the optimizer state in one file, or
with `--max-shard-mb N` in shards of at most N MiB, `train_state.json`, `train_log.json`), and
`--resume DIR` continues it where it
stopped: same weights, optimizer state, schedule position and RNG states, so a schedule run in
several calls ends with the weights of one run. The log covers every call. `--time-shares`
instead fits the whole schedule into one call: each stage ends at its share of the budget.

With `--sparse-attention [CONFIG]` the model trains (and evaluates) through the sparse
patterns (`minference_flex.compile`, whose ops all have a backward): every forward of at least
`--min-sparse-len` tokens runs each head's pattern from CONFIG (a pattern config file; by
default the one searched for the `--init` model, else MInference's default). `--init DIR`
fine-tunes a saved model (the shipped one: minference_flex/models/retrieval_llama) instead of
training from scratch, e.g. at long lengths:

    python -m minference_flex.retrieval.train --init minference_flex/models/retrieval_llama --sparse-attention \
        --stages 8192:200:2 16384:100:1 --out DIR

Every `--eval-every` steps it greedy-decodes `--eval-samples` held-out samples per task
(seeds disjoint from training) at the current stage's length and logs exact-match accuracy;
when the schedule is done, at every stage's length. The full accuracy table is
`python -m minference_flex eval`'s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from minference_flex.retrieval import checkpoint
from minference_flex.retrieval.model import answer
from minference_flex.retrieval.tasks import TASKS, TOKENIZER, Sample, exact_match, make_sample

#: Held-out evaluation seeds start here; training draws seeds below it.
EVAL_SEED_BASE = 10**9


#: Preset fields that set the model's shape, with their types (each a CLI option)
SHAPE_FIELDS = {"hidden": int, "layers": int, "heads": int, "kv_heads": int, "intermediate": int,
                "rope_theta": float}


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
    #: the first stage's tasks (empty: `tasks`); the other tasks join from the second stage on.
    #: Retrieval heads form on passkey and needle alone within a few hundred steps at 128
    #: tokens; with multikey in the mix from the start they had not formed after 1000 (CPU)
    first_stage_tasks: tuple = ()

    def __post_init__(self) -> None:
        extra = [t for t in self.first_stage_tasks if t not in self.tasks]
        if extra:
            raise ValueError(f"first-stage tasks {extra} are not among the preset's tasks {list(self.tasks)}")
        shape = {name: getattr(self, name) for name in SHAPE_FIELDS}
        if min(shape.values()) <= 0:
            raise ValueError(f"the model's shape must be > 0 everywhere, got {shape}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads}), "
                             f"and heads of kv_heads ({self.kv_heads})")

    def tasks_of(self, stage: int) -> tuple:
        """The tasks that stage `stage` trains and evaluates."""
        return self.first_stage_tasks if stage == 0 and self.first_stage_tasks else self.tasks

    @classmethod
    def from_dict(cls, fields: dict) -> Preset:
        """The preset whose `asdict` (through JSON) is `fields`."""
        return cls(**{**fields, "tasks": tuple(fields["tasks"]), "stages": [tuple(s) for s in fields["stages"]],
                      "first_stage_tasks": tuple(fields.get("first_stage_tasks", ()))})


PRESETS = {
    # short prompts first: retrieval heads form far sooner at 128 tokens than at 512. Two tasks,
    # as in the cpu preset that learned both: with all four, 4 min on an H100 learned the pass
    # key only (perf/RESULTS.md, "Accuracy")
    "gpu": Preset(tasks=("passkey", "needle"),
                  stages=[(128, 2000, 64), (512, 2500, 32), (2048, 1000, 8), (8192, 300, 2), (16384, 200, 1)]),
    # the shipped model: `python -m minference_flex.retrieval.train --out DIR --preset cpu --max-minutes 30
    # --eval-every 250 --eval-samples 10` (19 min on 2 CPU cores)
    "cpu": Preset(hidden=128, layers=4, heads=2, kv_heads=1, intermediate=384, lr=3e-3,
                  tasks=("passkey", "needle"), stages=[(128, 500, 32), (512, 250, 8), (2048, 100, 2)]),
    # aimed at 64K (`python -m perf retrieval-model` runs it). The cpu
    # preset's shape, which formed its retrieval heads within 300 steps at 128 tokens (0.8M
    # params), with RoPE base 1e7 (above the ~2e6 bound that "Base of RoPE Bounds Context Length"
    # gives for 64K). Tasks passkey, needle and multikey (kv left out: its 6-digit keys need
    # matching over several tokens). Passkey and needle first: with multikey in the mix from the
    # start nothing formed in 1430 steps of 32 at 128 tokens (CPU), and multikey, which needs the
    # asked key word matched (needle has one needle, so it needs no matching), was still at
    # chance after 1000 more steps on the model that had learned the other two (up to 100K
    # multikey samples on CPU left it at chance), so the second stage draws 1.5M samples of the
    # three at 128 tokens in batches of 256 (a 6-layer, 256-wide model took 25 ms
    # a step at 64 x 128 tokens on an H100; the host draws a batch of 256 in about 20 ms, while
    # the GPU runs the step before). Then the lengths grow to 64K, with 30% of the steps
    # replaying shorter lengths. The shipped model is this preset's run (its MODEL_CARD.md).
    "long": Preset(hidden=128, layers=4, heads=2, kv_heads=1, intermediate=384, lr=3e-3, rope_theta=1e7,
                   tasks=("passkey", "needle", "multikey"), first_stage_tasks=("passkey", "needle"),
                   stages=[(128, 400, 64), (128, 6000, 256), (512, 1500, 64), (2048, 800, 16), (8192, 500, 4),
                           (16384, 400, 2), (32768, 500, 1), (65536, 1500, 1)]),
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
    tensors = (ids[:, :-1], ids[:, 1:], on_answer[:, 1:])
    if torch.device(device).type != "cuda":
        return tuple(t.to(device) for t in tensors)
    # from pinned memory the copies are queued, not waited for: the host builds the next batch
    # while the GPU runs this step (from pageable memory each copy would wait for the GPU)
    return tuple(t.contiguous().pin_memory().to(device, non_blocking=True) for t in tensors)


def loss_of(logits: torch.Tensor, targets: torch.Tensor, on_answer: torch.Tensor, lm_weight: float) -> torch.Tensor:
    """Answer loss plus `lm_weight` x next-token loss over the whole context. The context term
    teaches copying early: each passkey and needle number appears twice, and the noise
    sentences repeat, so induction heads pay off before the answer loss alone finds them."""
    per_token = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    # a masked mean, not per_token[on_answer]: boolean indexing waits for the GPU every step
    answer_loss = (per_token * on_answer).sum() / on_answer.sum()
    return answer_loss + lm_weight * per_token.mean()


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


def lr_at(preset: Preset, step: int) -> float:
    """The learning rate of step `step` (0-based) of the preset's schedule: linear warm-up over
    min(100, total / 10) steps, then cosine decay to 10% of `preset.lr` at the last step."""
    total = sum(steps for _, steps, _ in preset.stages)
    warmup = min(100, total // 10)
    if step < warmup:
        return preset.lr * (step + 1) / warmup
    return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


@dataclass(frozen=True)
class Budget:
    """What one call may spend: `minutes` of wall time (it stops early enough to save a
    checkpoint), at most `steps` steps (None: no limit). With `shares`, each stage instead ends
    at its share of the minutes (in proportion to its steps, skipping the steps left), so one
    call reaches the last stage on a slow machine; meant for one-call runs."""

    minutes: float
    steps: int | None = None
    shares: bool = False


@dataclass
class Progress:
    """Where the schedule stands: `step` steps done in all calls (the LR schedule's position),
    `stage` the current stage's index and `stage_step` the steps done in it."""

    step: int = 0
    stage: int = 0
    stage_step: int = 0

    def done(self, stages: list) -> bool:
        return self.stage >= len(stages)

    def advance(self, stages: list) -> None:
        """One step done; the stage's last one moves on to the next stage."""
        self.step += 1
        self.stage_step += 1
        if self.stage_step == stages[self.stage][1]:
            self.next_stage()

    def next_stage(self) -> None:
        self.stage, self.stage_step = self.stage + 1, 0


#: Seconds a call keeps for saving its checkpoint after its last step.
SAVE_SECONDS = 15.0


class _Clock:
    """This call's wall time, from `start`."""

    def __init__(self, budget: Budget, stages: list, start: float) -> None:
        self.deadline = start + 60 * budget.minutes
        total = sum(steps for _, steps, _ in stages)
        cumulative = itertools.accumulate(steps for _, steps, _ in stages)
        self.stage_ends = [start + 60 * budget.minutes * c / total for c in cumulative] if budget.shares else None
        self.longest: dict[int, float] = {}

    def lap(self, stage: int, seconds: float) -> None:
        """One iteration of `stage` (step, logging and eval) took `seconds`."""
        self.longest[stage] = max(seconds, self.longest.get(stage, 0.0))

    def share_spent(self, stage: int) -> bool:
        return self.stage_ends is not None and time.time() > self.stage_ends[stage]

    def call_spent(self, stage: int) -> bool:
        """Without shares: one more iteration, as long as the longest one of this stage so far
        (of any stage before the first), would leave less than SAVE_SECONDS of the budget."""
        if self.stage_ends is not None:
            return False
        iteration = self.longest.get(stage, max(self.longest.values(), default=0.0))
        return time.time() + iteration + SAVE_SECONDS > self.deadline


def _compile_sparse(model, sparse_attention: str, init: str | None, min_sparse_len: int) -> str | None:
    """Route `model`'s training forwards through the sparse patterns of `sparse_attention` (a
    pattern config path, or "auto": the config searched for `init`, else MInference's
    default); returns the config path (None: the default)."""
    import minference_flex as mf

    from minference_flex.retrieval.model import searched_config_path

    config = sparse_attention
    if config == "auto":
        config = searched_config_path(init) if init is not None else None
    mf.compile(model, config, min_sparse_len=min_sparse_len)
    return config


def _check_same_schedule(preset: Preset, saved: dict, path: str) -> None:
    """A resumed run must continue the checkpoint's schedule: same preset, field by field."""
    ours = json.loads(json.dumps(asdict(preset)))
    try:  # fields added since the checkpoint was written take their defaults
        saved = json.loads(json.dumps(asdict(Preset.from_dict(saved))))
    except (TypeError, ValueError):
        pass
    changed = sorted(name for name in ours if ours[name] != saved.get(name))
    if changed:
        raise ValueError(
            f"--resume {path}: the checkpoint was trained with other {', '.join(changed)} "
            f"({', '.join(f'{n}={saved.get(n)!r}' for n in changed)}); resume with its own preset "
            f"(leave out --preset, --stages, --tasks, --first-stage-tasks, --lr and --lm-weight)"
        )


def _train_step(model, opt, rng: random.Random, preset: Preset, stage: int, device: str, autocast) -> dict:
    """One optimizer step of `stage` (or, with probability `preset.replay` after the first
    stage, of an earlier stage's length and batch, on this stage's tasks); returns the tensors
    to log."""
    length, _, batch = preset.stages[stage]
    if stage and rng.random() < preset.replay:
        length, _, batch = preset.stages[rng.randrange(stage)]
    ids, targets, on_answer = batch_of(_train_samples(rng, length, batch, preset.tasks_of(stage)), device)
    with autocast:
        logits = model(ids).logits
    loss = loss_of(logits, targets, on_answer, preset.lm_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    hits = (logits.argmax(-1) == targets) & on_answer  # no boolean indexing: no host sync
    return {"length": length, "loss": loss.detach(), "digit_acc": hits.sum() / on_answer.sum()}


def train(preset: Preset, out_dir: str, device: str, budget: Budget, eval_every: int, eval_samples: int,
          seed: int = 0, init: str | None = None, sparse_attention: str | None = None,
          min_sparse_len: int = 1024, resume: str | None = None, max_shard_bytes: int | None = None) -> dict:
    """Train (with `init`, fine-tune the model saved there; with `resume`, continue the
    checkpoint saved there) on the preset's curriculum until the schedule is done or `budget`
    is spent, then save a checkpoint (`minference_flex.retrieval.checkpoint`) in out_dir. With
    `sparse_attention` (a pattern config path, or "auto": the config searched for `init`, else
    MInference's default) every forward of at least `min_sparse_len` tokens runs the sparse
    patterns. The checkpoint's optimizer state is one file, or with `max_shard_bytes` shards of
    at most that many bytes of tensors. Returns the log, which covers every call of the schedule."""
    start = time.time()
    rng = random.Random(seed)
    if resume is None:
        torch.manual_seed(seed)
        model = build_model(preset).to(device) if init is None else load_for_training(init, device)
        opt_state, progress = None, Progress()
        log = {"preset": asdict(preset), "device": device, "steps": [], "evals": [], "init": init,
               "sparse_attention": None, "calls": []}
    else:
        model = load_for_training(resume, device)
        opt_state, saved, log = checkpoint.load(resume)
        _check_same_schedule(preset, saved["preset"], resume)
        progress, seed, init = Progress(**saved["progress"]), saved["seed"], log["init"]
        checkpoint.restore_rng(rng, saved["rng"])
    if progress.done(preset.stages):
        print(f"the schedule of {resume} is done ({progress.step} steps): nothing to train", file=sys.stderr)
        return log
    sparse = None
    if sparse_attention is not None:
        config = _compile_sparse(model, sparse_attention, init, min_sparse_len)
        sparse = {"config": config if isinstance(config, str) else "default", "min_sparse_len": min_sparse_len}
        log["sparse_attention"] = log["sparse_attention"] or sparse
    opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=0.1)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    call = {"device": device, "first_step": progress.step, "sparse_attention": sparse}
    earlier_minutes = sum(c["minutes"] for c in log["calls"])
    clock = _Clock(budget, preset.stages, start)
    steps_here, last_logged = 0, time.time()
    model.train()
    while not progress.done(preset.stages) and (budget.steps is None or steps_here < budget.steps):
        stage = progress.stage
        if clock.share_spent(stage):
            print(f"stage {preset.stages[stage][0]}: time share used up at step {progress.step}", file=sys.stderr)
            progress.next_stage()
            continue
        if clock.call_spent(stage):
            print(f"time budget spent at step {progress.step}", file=sys.stderr)
            break
        tick = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(preset, progress.step)
        stats = _train_step(model, opt, rng, preset, stage, device, autocast)
        progress.advance(preset.stages)
        steps_here += 1
        if progress.step % 10 == 0:
            entry = {"step": progress.step, "length": stats["length"], "loss": stats["loss"].item(),
                     "digit_acc": stats["digit_acc"].item(),
                     "minutes": earlier_minutes + (time.time() - start) / 60,
                     "step_ms": 1000 * (time.time() - last_logged) / min(10, steps_here)}
            last_logged = time.time()
            log["steps"].append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
        if progress.step % eval_every == 0:
            length = preset.stages[stage][0]
            with autocast:
                scores = evaluate(model, length, eval_samples, preset.tasks_of(stage))
            log["evals"].append({"step": progress.step, "length": length, **scores})
            print(json.dumps(log["evals"][-1]), file=sys.stderr, flush=True)
        clock.lap(stage, time.time() - tick)
    done = progress.done(preset.stages)
    if done:
        log["final"] = _final_evals(model, preset, eval_samples, autocast)
    log["calls"].append({**call, "last_step": progress.step, "minutes": (time.time() - start) / 60})
    log["train_minutes"] = earlier_minutes + log["calls"][-1]["minutes"]
    log["steps_done"] = progress.step
    if sparse_attention is not None:  # save the plain model (its config names its own attention)
        import minference_flex as mf

        mf.restore(model)
    state = {"preset": asdict(preset), "seed": seed, "progress": asdict(progress), "done": done,
             "rng": checkpoint.capture_rng(rng)}
    _save(out_dir, model, None if done else opt.state_dict(), state, log, max_shard_bytes)
    return log


def _final_evals(model, preset: Preset, samples: int, autocast) -> dict[int, dict[str, float]]:
    """Accuracy per task at every stage's length, once the schedule is done."""
    final = {}
    for length in sorted({s[0] for s in preset.stages}):
        with autocast:
            final[length] = evaluate(model, length, samples, preset.tasks)
        print(json.dumps({"final_eval_length": length, **final[length]}), file=sys.stderr, flush=True)
    return final


def _save(out_dir: str, model, optimizer_state: dict | None, state: dict, log: dict,
          max_shard_bytes: int | None = None) -> None:
    """Write the checkpoint and print each file's size."""
    model.generation_config.pad_token_id = TOKENIZER.pad_id
    for path in checkpoint.save(out_dir, model, optimizer_state, state, log, max_shard_bytes):
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.2f} MiB)", file=sys.stderr)


def _base_preset(args, device: str) -> Preset:
    """The preset the options start from: --preset; resuming without it, the checkpoint's;
    else gpu on CUDA, cpu otherwise."""
    if args.preset is None and args.resume is not None:
        return Preset.from_dict(checkpoint.read_train_state(args.resume)["preset"])
    return PRESETS[args.preset or ("gpu" if device.startswith("cuda") else "cpu")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minference_flex.retrieval.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the checkpoint (model, optimizer, log)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: the checkpoint's with --resume, else gpu on CUDA, cpu otherwise")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--max-minutes", type=float, default=8.0,
                        help="time budget of this call: it stops and saves a checkpoint when spent")
    parser.add_argument("--max-steps", type=int, default=None, help="steps this call may run at most")
    parser.add_argument("--time-shares", action="store_true",
                        help="end each stage at its share of --max-minutes (in proportion to its steps), "
                             "skipping its steps left, so one call reaches the last stage")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the checkpoint saved in DIR")
    parser.add_argument("--max-shard-mb", type=float, default=None, metavar="MB",
                        help="split the checkpoint's optimizer state into files of at most MB MiB of tensors "
                             "(default: one file)")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-samples", type=int, default=20,
                        help="held-out samples per task and length (at the stage's length during training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None,
                        help="train on these tasks only, from the first stage on (unless --first-stage-tasks)")
    parser.add_argument("--first-stage-tasks", nargs="+", choices=TASKS, default=None,
                        help="the first stage's tasks, some of the preset's (or --tasks); the rest join after it")
    parser.add_argument("--stages", nargs="+", default=None, metavar="LENGTH:STEPS:BATCH",
                        help="override the preset's curriculum")
    parser.add_argument("--lr", type=float, default=None)
    for name, kind in SHAPE_FIELDS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                            help=f"the model's {name.replace('_', ' ')} (default: the preset's)")
    parser.add_argument("--lm-weight", type=float, default=None,
                        help="weight of the next-token loss over the whole context, beside the answer loss")
    parser.add_argument("--init", default=None, metavar="DIR", help="fine-tune the model saved in DIR")
    parser.add_argument("--sparse-attention", nargs="?", const="auto", default=None, metavar="CONFIG",
                        help="train through the sparse patterns of CONFIG (default: the config searched "
                             "for --init, else MInference's default)")
    parser.add_argument("--min-sparse-len", type=int, default=1024,
                        help="with --sparse-attention, the forwards of at least this many tokens go sparse")
    args = parser.parse_args(argv)
    if args.resume is not None and not os.path.exists(os.path.join(args.resume, checkpoint.STATE_FILE)):
        parser.error(f"--resume {args.resume}: no training checkpoint there ({checkpoint.STATE_FILE} missing)")
    if args.resume is not None and args.init is not None:
        parser.error("--resume continues a checkpoint, --init starts from a saved model: pass one of them")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device {device}: not a device; pass cpu, cuda or cuda:N")
    if kind not in ("cpu", "cuda"):
        parser.error(f"--device {device}: training runs on cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: no CUDA device is available; use --device cpu")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out}: a file is there; pass a directory")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.lm_weight is not None and not (math.isfinite(args.lm_weight) and args.lm_weight >= 0):
        parser.error(f"--lm-weight must be a finite number >= 0, got {args.lm_weight}")
    for name in ("eval_every", "eval_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    preset = _base_preset(args, device)
    changes: dict = {name: getattr(args, name) for name in SHAPE_FIELDS if getattr(args, name) is not None}
    if changes and (args.resume is not None or args.init is not None):
        parser.error("--resume and --init keep the saved model's shape: leave out the shape options")
    if args.tasks:
        changes.update(tasks=tuple(args.tasks), first_stage_tasks=())
    if args.first_stage_tasks:
        changes["first_stage_tasks"] = tuple(args.first_stage_tasks)
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.lm_weight is not None:
        changes["lm_weight"] = args.lm_weight
    try:  # Preset checks the whole: first-stage tasks among the tasks, a shape that divides
        preset = replace(preset, **changes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.stages:
        try:
            stages = [tuple(int(x) for x in st.split(":")) for st in args.stages]
            assert all(len(st) == 3 and min(st) > 0 and st[0] >= 64 for st in stages)
        except (ValueError, AssertionError):
            parser.error(f"--stages wants LENGTH:STEPS:BATCH, positive ints with LENGTH >= 64 tokens, "
                         f"got {args.stages}")
        preset = replace(preset, stages=stages)
    if not args.max_minutes > 0:  # NaN too
        parser.error(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.max_shard_mb is not None and not (math.isfinite(args.max_shard_mb) and args.max_shard_mb > 0):
        parser.error(f"--max-shard-mb must be a finite number > 0, got {args.max_shard_mb}")
    if args.min_sparse_len < 1:
        parser.error(f"--min-sparse-len must be >= 1, got {args.min_sparse_len}")
    if args.init is not None and not os.path.exists(os.path.join(args.init, "config.json")):
        parser.error(f"--init {args.init}: no saved model there (config.json missing)")
    budget = Budget(args.max_minutes, args.max_steps, args.time_shares)
    train(preset, args.out, device, budget, args.eval_every, args.eval_samples, args.seed,
          args.init, args.sparse_attention, args.min_sparse_len, args.resume,
          None if args.max_shard_mb is None else max(1, int(args.max_shard_mb * 2**20)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
