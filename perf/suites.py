"""The benchmark suites of `python -m perf` (perf/__main__.py): what each one runs, in which
order, with which defaults.

A suite is a list of steps, each in a named part (`--part` picks parts; without it a suite runs
its default parts in order). A step runs one of:
- a perf script's `main(argv)` in this process (`Step(script="perf.bench_e2e")`);
- a command in a subprocess (`python -m minference_flex eval`, `accelerate launch ...`, pytest);
- a Python function of the run (`call`), e.g. writing calibration prompts.
The steps marked `options=True` are the suite's own: the options given after the suite's name
go to them, after the defaults (argparse keeps the last value of an option given twice, so
`python -m perf e2e --lengths 131072` replaces the default lengths). Output files are named by
`perf.common.result_name`: suite, date, commit, GPU, and a tag where a suite writes several.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from perf.common import result_name

#: The retrieval model shipped in the package (its weights, config and MODEL_CARD.md).
RETRIEVAL_MODEL = os.path.join("minference_flex", "models", "retrieval_llama")
#: Accelerate's launcher for two processes on one machine, no mixed precision or dynamo.
ACCELERATE_2 = ["accelerate", "launch", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
NIAH_DEPTHS = [str(d) for d in range(0, 101, 10)]


@dataclass
class Run:
    """One run of a suite: where its files go and what it has done so far."""

    suite: str
    out_dir: str
    date: str
    commit: str
    gpu: str
    parts: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def path(self, tag: str | None = None, ext: str = ".json") -> str:
        """A file (or with ext "", a folder) of this run in the output folder."""
        return os.path.join(self.out_dir, result_name(self.suite, self.date, self.commit, self.gpu, tag, ext))


Args = Callable[[Run], list[str]]


@dataclass(frozen=True)
class Step:
    """One step of a suite (see the module docstring). `script`: a module whose main(argv) runs
    here; else `command` (argv before `args`) runs in a subprocess; else `call(run)` runs."""

    part: str
    args: Args = lambda run: []
    script: str | None = None
    command: tuple[str, ...] = ()
    call: Callable[[Run], None] | None = None
    options: bool = False
    options_first: bool = False  # the options go before `args` (positional arguments)
    tag: str | None = None  # the step's name in the run's timings (default: its part)
    name: str | None = None  # what it runs, where `command` alone does not say (the options check)

    def argv(self, run: Run, options: list[str]) -> list[str]:
        mine = options if self.options else []
        return [*mine, *self.args(run)] if self.options_first else [*self.args(run), *mine]

    def target(self) -> str:
        """What the step runs, for messages and the check that options go to one script."""
        if self.name or self.script:
            return self.name or self.script
        if self.command:
            return " ".join(self._shown(self.command))
        return getattr(self.call, "__name__", "call")

    @staticmethod
    def _shown(command) -> list[str]:
        return ["python" if part == sys.executable else part for part in command]

    def describe(self, run: Run, options: list[str]) -> str:
        import shlex

        if self.script:
            return shlex.join(["python", self.script.replace(".", "/") + ".py", *self.argv(run, options)])
        if self.command:
            return shlex.join([*self._shown(self.command), *self.argv(run, options)])
        return f"{self.target()}(): {(self.call.__doc__ or '').strip().splitlines()[0]}"


@dataclass(frozen=True)
class Suite:
    name: str
    summary: str  # one line for `python -m perf --help`
    steps: tuple[Step, ...]
    default_parts: tuple[str, ...] = ()  # () = every part
    gpu_tests: tuple[str, ...] = ()  # what --gpu-tests runs first (pytest -m gpu)
    default_options: tuple[str, ...] = ()  # the options when none are given
    env: tuple[tuple[str, str], ...] = ()  # environment defaults (set unless already set)

    @property
    def parts(self) -> list[str]:
        return list(dict.fromkeys(s.part for s in self.steps))

    def steps_of(self, parts: list[str]) -> list[Step]:
        return [s for s in self.steps if s.part in parts]


def python_m(module: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module)


EXPANDABLE = (("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),)


# --- e2e: the pattern search on the Llama-3-8B shape, then the pre-fill with its config ---------

def _e2e_args(run: Run) -> list[str]:
    searched = ["--config", f"searched={run.path('searched')}"] if "search" in run.parts else []
    return ["--lengths", "32768", "131072", *searched, "--out", run.path()]


# --- chunked pre-fill -------------------------------------------------------------------------

CHUNKED = ["--chunk", "32768", "--skip", "flex_attention"]
NOT_SHIPPED = ["--skip", "sdpa", "flex_attention", "dense", "minference_flex[shipped] random"]

# --- multi-gpu --------------------------------------------------------------------------------

MULTI_E2E = ["--chunk", "32768"]
MULTI_EVAL = ["eval", "--lengths", "4096", "8192", "--samples", "20", "--tasks", "passkey", "needle"]


def compare_evals(run: Run) -> None:
    """Compare the 1-process and the 2-process eval tables (rows, recall, wall time)."""
    one, two = (json.load(open(run.path(f"eval_{n}proc"))) for n in (1, 2))
    summary = {"rows_equal": one["rows"] == two["rows"], "recall_equal": one["recall"] == two["recall"],
               "processes": [one["processes"], two["processes"]],
               "wall_s_1proc": run.timings.get("eval_1proc"), "wall_s_2proc": run.timings.get("eval_2proc")}
    print(json.dumps(summary, indent=1))
    with open(run.path("eval_compare"), "w") as f:
        json.dump(summary, f, indent=1)


# --- retrieval model: train, search, inspect, evaluate ------------------------------------------

CALIBRATION_LENGTH = 32768


def write_calibration(run: Run) -> None:
    """Write calibration prompts (training seed 7: never an eval sample) for the search."""
    from minference_flex.retrieval.tasks import make_sample

    os.makedirs(run.out_dir, exist_ok=True)
    for task in ("multikey", "passkey", "needle"):
        with open(run.path(f"calibration_{task}"), "w") as f:
            json.dump(make_sample(task, CALIBRATION_LENGTH, 7).prompt, f)


def search_budgets(calibration: int = CALIBRATION_LENGTH) -> list[str]:
    """MInference's candidates scaled by calibration / 128K (the A-shape too), its default
    (1000, 6096), (30, 800) unscaled, block-sparse, and columns with the local band alone."""
    s = calibration // 1024
    specs = [(1000, 6096), (1000 * s // 128, 6096 * s // 128), (3500 * s // 128, 100), (30, 800 * s // 128),
             (100, 800 * s // 128), (30, 800), (300, 100), (1000, 100)]
    budgets = [f"vs:{a},{b}" for a, b in specs] + [f"a:128,{4096 * s // 128}", "bs"]
    return [arg for b in budgets for arg in ("--budget", b)]


def _retrieval_search(model: Callable[[Run], str], out: Callable[[Run], str]) -> Step:
    return Step("search", lambda run: ["search", "--model", model(run), "--out", out(run),
                                       "--calibration", run.path("calibration_multikey"), *search_budgets()],
                command=python_m("minference_flex"))


def _trained(run: Run) -> str:
    return run.path("model", ext="")


def _searched_for_eval(run: Run) -> list[str]:
    return ["--searched", run.path("pattern_config")] if "search" in run.parts else []


FINETUNE = ["--init", RETRIEVAL_MODEL, "--tasks", "passkey", "needle", "multikey", "--stages", "65536:200:1",
            "--lr", "3e-4", "--eval-every", "1000000", "--eval-samples", "20", "--max-minutes", "60"]


def _finetune(kind: str) -> Step:
    sparse = ["--sparse-attention", "auto"] if kind == "sparse" else []
    return Step(kind, lambda run: [*FINETUNE, *sparse, "--out", run.path(kind, ext="")],
                command=(sys.executable, "-m", "minference_flex.retrieval.train"), options=True)


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("kernels", "each sparse kernel against dense SDPA at 32K and 128K (bench_kernels.py)",
          (Step("kernels", lambda run: ["--lengths", "32768", "131072", "--rep-ms", "1000", "--out", run.path()],
                script="perf.bench_kernels", options=True),),
          gpu_tests=("tests",)),
    Suite("e2e", "pattern search, then end-to-end pre-fill at 32K and 128K (bench_search.py, bench_e2e.py)",
          (Step("search", lambda run: ["--length", "32768", "--out", run.path("searched"),
                                       "--summary", run.path("search_summary")], script="perf.bench_search"),
           Step("e2e", _e2e_args, script="perf.bench_e2e", options=True))),
    Suite("chunked", "chunked pre-fill at 128K-512K; parts memory, memory-1m (bench_e2e.py --chunk)",
          (Step("speed", lambda run: [*CHUNKED, "--layers", "4", "--lengths", "131072", "262144",
                                      "--out", run.path("128k_256k")], script="perf.bench_e2e", options=True),
           Step("speed", lambda run: [*CHUNKED, "--layers", "2", "--lengths", "524288", "--out", run.path("512k")],
                script="perf.bench_e2e", options=True),
           Step("memory", lambda run: [*CHUNKED, "--layers", "32", "--lengths", "524288", "--offload", "--no-warmup",
                                       "--generate", *NOT_SHIPPED, "--out", run.path("512k_full_offload")],
                script="perf.bench_e2e", options=True),
           Step("memory-1m", lambda run: [*CHUNKED, "--shape", "qwen2.5-7b-1m", "--layers", "28",
                                          "--lengths", "1048576",
                                          "--no-warmup", "--generate", *NOT_SHIPPED, "--out", run.path("qwen_1m_full")],
                script="perf.bench_e2e", options=True)),
          default_parts=("speed",), gpu_tests=("tests/patch/test_gpu_chunked.py",), env=EXPANDABLE),
    Suite("train", "forward + backward against cuDNN at 128K, then 1B model steps at 64K (bench_train.py)",
          (Step("bench", lambda run: ["--lengths", "131072", "--rep-ms", "300", "--launch-sweep",
                                      "--out", run.path("128k")], script="perf.bench_train", options=True),
           Step("step", lambda run: ["--model-step", "--lengths", "65536", "--out", run.path("step_64k")],
                script="perf.bench_train", options=True)),
          gpu_tests=("tests/ops/test_gpu_backward.py",), env=EXPANDABLE),
    Suite("search", "pattern search on the Llama-3-8B shape at 32K: time and memory (bench_search.py)",
          (Step("search", lambda run: ["--length", "32768", "--out", run.path("config"), "--summary", run.path()],
                script="perf.bench_search", options=True),)),
    Suite("accuracy", "accuracy table of the retrieval model at 4K-32K, then the demo (minference_flex eval)",
          (Step("eval", lambda run: ["eval", "--lengths", "4096", "8192", "16384", "32768", "--samples", "50",
                                     "--tasks", "passkey", "needle", "--out", run.path()],
                command=python_m("minference_flex"), options=True),
           Step("demo", lambda run: ["demo"], command=python_m("minference_flex"))),
          gpu_tests=("tests",)),
    Suite("multi-gpu", "2 GPUs under accelerate: 1M and 256K pre-fill, eval in 2 processes, DDP steps",
          (Step("prefill", lambda run: [*MULTI_E2E, "--gpus", "2", "--offload", "--layers", "32",
                                        "--lengths", "1048576",
                                        "--no-warmup", "--skip", "sdpa", "dense", "flex_attention",
                                        "minference_flex[shipped] random", "--out", run.path("1m_2gpus_offload")],
                script="perf.bench_e2e", options=True),
           Step("ratio", lambda run: [*MULTI_E2E, "--gpus", "2", "--offload", "--layers", "2", "--lengths", "1048576",
                                      "--skip", "sdpa", "flex_attention",
                                      "--out", run.path("1m_2layers_2gpus_offload")],
                script="perf.bench_e2e", options=True),
           *(Step("prefill256", (lambda gpus: lambda run: [
               *MULTI_E2E, "--gpus", str(gpus), "--layers", "32", "--lengths", "262144", "--no-warmup",
               "--skip", "sdpa", "flex_attention", "minference_flex[shipped] random",
               "--out", run.path(f"256k_{gpus}gpus")])(gpus), script="perf.bench_e2e", options=True)
             for gpus in (1, 2)),
           Step("eval", lambda run: [*MULTI_EVAL, "--out", run.path("eval_1proc")], command=python_m("minference_flex"),
                options=True, tag="eval_1proc", name="python -m minference_flex eval"),
           Step("eval", lambda run: [*MULTI_EVAL, "--out", run.path("eval_2proc")],
                command=(*ACCELERATE_2, "-m", "minference_flex"), options=True, tag="eval_2proc",
                name="python -m minference_flex eval"),
           Step("eval", call=compare_evals),
           Step("ddp", lambda run: ["perf/accelerate_train_step.py", "--shape", "llama-1b", "--seq-len", "32768",
                                    "--loss-tokens", "1024", "--steps", "3", "--checkpointing",
                                    "--out", run.path("ddp_step_llama1b")], command=ACCELERATE_2, options=True,
                name="perf/accelerate_train_step.py")),
          gpu_tests=("tests/evaluation/test_gpu_accelerate.py",), env=EXPANDABLE),
    Suite("tune", "kernel launch sweeps at 128K and 256K (tune_kernels.py)",
          (Step("128k", lambda run: ["--seq-len", "131072", "--out", run.path("131072")],
                script="perf.tune_kernels", options=True),
           Step("256k", lambda run: ["--seq-len", "262144", "--only", "estimate", "bs", "vs", "--flex-options",
                                     "current", "--stages", "3", "--out", run.path("262144")],
                script="perf.tune_kernels", options=True))),
    Suite("real-models", "search, refine and evaluate a real LLM: MODEL LENGTH, default smollm2 8192 (real_models.sh)",
          (Step("real-models", lambda run: [run.out_dir], command=("bash", "perf/real_models.sh"), options=True,
                options_first=True),), default_options=("smollm2", "8192")),
    Suite("retrieval-model", "train the retrieval model (--preset long), search its config, inspect its heads",
          (Step("train", lambda run: ["--preset", "long", "--out", _trained(run), "--max-minutes", "60",
                                      "--eval-every", "500", "--eval-samples", "5"],
                command=(sys.executable, "-m", "minference_flex.retrieval.train"), options=True),
           Step("search", call=write_calibration),
           _retrieval_search(_trained, lambda run: os.path.join(_trained(run), "pattern_config.json")),
           Step("inspect", lambda run: ["--model", _trained(run), "--length", "16384", "--out", run.path("attention")],
                script="perf.inspect_attention"))),
    Suite("retrieval-eval", "the shipped retrieval model: config search, accuracy table at 4K-64K, needle sweep",
          (Step("search", call=write_calibration),
           _retrieval_search(lambda run: RETRIEVAL_MODEL, lambda run: run.path("pattern_config")),
           Step("eval", lambda run: ["eval", "--lengths", "4096", "8192", "16384", "32768", "65536", "--samples", "50",
                                     "--tasks", "passkey", "needle", "multikey", *_searched_for_eval(run),
                                     "--niah-depths", *NIAH_DEPTHS, "--niah-samples", "10", "--out", run.path()],
                command=python_m("minference_flex"), options=True)),
          gpu_tests=("tests/patch/test_gpu_models.py",)),
    Suite("finetune", "fine-tune the retrieval model at 64K dense and sparse, then compare (compare_finetune.py)",
          (_finetune("dense"), _finetune("sparse"),
           Step("compare", lambda run: [run.path("dense", ext=""), run.path("sparse", ext=""), "--out", run.path()],
                script="perf.compare_finetune"))),
]}


__all__ = ["SUITES", "Run", "Step", "Suite", "result_name"]
