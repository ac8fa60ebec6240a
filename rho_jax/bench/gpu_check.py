"""The prepared GPU check: everything the first NVIDIA GPU should measure, in one command with a hard time limit.

    python -m rho_jax.bench gpu [--output runs/gpu_check] [--budget-s 450] [--parts a,b,...]
                                [--part-budget NAME=SECONDS ...] [--smoke]

(`scripts/gpu_check.sh` wraps it for the device machine.) Parts, in order, each in its own process
with its own time limit (`rho_jax.bench.parts`), each written to OUTPUT/report.json and report.md as
soon as it ends, whatever becomes of the parts after it:

    environment  device kind and count, memory limit, jax/jaxlib/flax/... versions, datasheet peak
    correctness  pytest on this device, with JAX_DEFAULT_MATMUL_PRECISION=highest (fp32 means fp32): the
                 HF-parity tests, then the attention kernels (blockwise, flash compiled and interpreted,
                 splash interpreted; outputs and gradients, fp32 and bf16, against grouped attention)
    step         `rho_jax.bench.step_bench` on the TinyLlama-1.1B shape in bf16 (random init), seq 2048:
                 CLM, SLM (online reference), SLM (precomputed scores), scoring, selection; MFU against
                 the datasheet peak; selection over a 1M-token global batch; the targets, PASS or MISS:
                     SLM (online) / CLM <= 1.40, SLM (precomputed) / CLM <= 1.05,
                     MFU of SLM (online), reference FLOPs counted, >= 40%, selection < 3% of a 1M-token step
    remat        the largest batch of the SLM (online) step with remat "full" that compiles within the
                 device's memory and runs: batches doubled from a start, a bounded number of tries,
                 stopping at the first out-of-memory (compiled size over the limit, or RESOURCE_EXHAUSTED)
    attention    a CLM step of TinyLlama-shaped layers (configs/models/tinyllama-4l.yaml) on packed
                 rows (several documents per row) per attention implementation (flash, xla and cudnn
                 with the dense mask, blockwise) at seq 2048 and 4096, equal tokens per step: time, memory
    trainer      `rho_jax.bench.loop_bench`: the Trainer's steady-state tokens/s over ~200 steps vs its bare step

--smoke runs the same parts on tiny-cpu with tiny shapes, on any backend: the orchestration's own test
(its time is compiling about ten small programs: 2.5 minutes on the shared 2-core CPU machine under load).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rho_jax.bench.parts import Part, PartRecorder, run_parts
from rho_jax.training.checkpoint_errors import one_line

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "configs" / "models"
MIB = 2**20

PARTS = (
    Part("environment", "a. environment", 15),
    Part("correctness", "b. correctness on the device (pytest)", 85),
    Part("step", "c. TinyLlama-1.1B bf16 step", 170),
    Part("remat", "d. largest batch with remat", 70),
    Part("attention", "e. attention kernels in the step", 65),
    Part("trainer", "f. trainer vs bare step", 45),
)
PART_NAMES = tuple(part.name for part in PARTS)
DEFAULT_BUDGET_S = 450.0
SMOKE_PART_BUDGET_S = 300.0  # --smoke: a tiny part's time on a busy CPU is compilation, not what the limits are for

# (target, comparison, threshold) for the step part's measurements (issue 19)
TARGETS = (
    ("SLM (online) / CLM step time", operator.le, 1.40),
    ("SLM (precomputed) / CLM step time", operator.le, 1.05),
    ("MFU of the SLM (online) step, reference FLOPs counted", operator.ge, 0.40),
    ("selection over 1M tokens / SLM (online) step", operator.lt, 0.03),
)
_SYMBOL = {operator.le: "<=", operator.ge: ">=", operator.lt: "<"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Models and shapes of the parts (`FULL` on the GPU, `SMOKE` for the CPU test)."""

    dtype: str
    step_model: Path
    step_batch: int
    seq_len: int
    steps: int
    selection_tokens: int
    remat_start_batch: int
    remat_tries: int
    attention_model: Path
    attention_seqs: tuple[int, ...]
    attention_tokens: int  # per step, every sequence length
    attention_implementations: tuple[str, ...]
    attention_steps: int
    trainer_model: Path
    trainer_args: tuple[str, ...]  # `python -m rho_jax.bench loop` flags besides --model
    pytest_suites: tuple[tuple[str, tuple[str, ...]], ...]  # (name, pytest arguments)


FULL = Settings(
    dtype="bfloat16", step_model=MODELS / "tinyllama-1.1b.yaml", step_batch=8, seq_len=2048, steps=5,
    selection_tokens=2**20, remat_start_batch=32, remat_tries=4,
    attention_model=MODELS / "tinyllama-4l.yaml", attention_seqs=(2048, 4096), attention_tokens=16384,
    attention_implementations=("flash", "xla", "cudnn", "blockwise"), attention_steps=5,  # most wanted first
    trainer_model=MODELS / "tinyllama-4l.yaml",
    trainer_args=("--batch", "4", "--seq-len", "512", "--rounds", "8", "--round-steps", "25", "--bare-steps", "3",
                  "--warmup", "3"),
    pytest_suites=(("HF parity", ("tests/test_hf_parity.py",)),
                   ("attention kernels", ("tests/test_attention_kernels.py", "-k", "not per_device_rows"))),
)
SMOKE = Settings(
    dtype="float32", step_model=MODELS / "tiny-cpu.yaml", step_batch=2, seq_len=64, steps=1, selection_tokens=4096,
    remat_start_batch=1, remat_tries=2,
    attention_model=MODELS / "tiny-cpu.yaml", attention_seqs=(64, 128), attention_tokens=256,
    attention_implementations=("blockwise", "cudnn"), attention_steps=1,  # cudnn: an error row off NVIDIA GPUs
    trainer_model=MODELS / "tiny-cpu.yaml",
    trainer_args=("--batch", "2", "--seq-len", "64", "--rounds", "1", "--round-steps", "4", "--bare-steps", "1",
                  "--warmup", "1"),
    pytest_suites=(("attention kernels",
                    ("tests/test_attention_kernels.py::test_document_mask_dense_matches_token_by_token_rule",)),),
)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is XLA's out-of-memory error (RESOURCE_EXHAUSTED)."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


def _device_memory_limit() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    return stats.get("bytes_limit") if stats else None


# ---- a. environment -------------------------------------------------------------------------------------


def environment(settings: Settings, recorder: PartRecorder, deadline: float) -> None:
    import jax

    from rho_jax.bench import flops

    device = jax.devices()[0]
    recorder.record("device_kind", device.device_kind)
    recorder.record("platform", device.platform)
    recorder.record("device_count", jax.device_count())
    recorder.record("memory_limit_gib", None if (limit := _device_memory_limit()) is None else round(limit / 2**30, 2))
    recorder.record("datasheet_bf16_peak_tflops", flops.peak_tflops(device.device_kind))
    versions = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
                    "transformers", "torch", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    recorder.record("versions", [versions])
    print(jax.print_environment_info(return_string=True))


# ---- b. correctness -------------------------------------------------------------------------------------


def junit_summary(path: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(counts and seconds, one row per failed test) of a pytest JUnit XML file."""
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    summary = {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
               "failed": counts["failures"] + counts["errors"], "skipped": counts["skipped"],
               "seconds": float(suite.get("time", 0.0))}
    failures = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").strip()
            failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                             "message": message.splitlines()[0][:200] if message else ""})
    return summary, failures


def correctness(settings: Settings, recorder: PartRecorder, deadline: float) -> None:
    env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, selection in settings.pytest_suites:
            left = deadline - time.time() - 3
            junit = Path(tmp) / "junit.xml"
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *selection]
            try:
                done = subprocess.run(command, cwd=ROOT, env=env, timeout=max(left, 1), capture_output=True, text=True)
            except subprocess.TimeoutExpired as err:
                print(err.stdout or "")
                recorder.record(name, {"status": f"timed out after {max(left, 1):.0f} s"})
                continue
            print(done.stdout, done.stderr)
            if not junit.exists():
                recorder.record(name, {"status": f"pytest exited {done.returncode} without a report",
                                       "output": done.stdout.strip().splitlines()[-1:]})
                continue
            summary, failures = junit_summary(junit)
            recorder.record(name, summary)
            if failures:
                recorder.record(f"{name}: failures", failures)


# ---- c. the TinyLlama step --------------------------------------------------------------------------------


def target_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of `TARGETS` with the measured value from a `step_bench.run` result and PASS/MISS."""
    rows = {row["variant"]: row for row in result["rows"]}
    large = result["large_selection"]
    measured = (rows["SLM (online reference)"]["ratio"], rows["SLM (precomputed scores)"]["ratio"],
                rows["SLM (online reference)"]["mfu"], large["share"] if large else None)
    out = []
    for (target, compare, threshold), value in zip(TARGETS, measured):
        verdict = "n/a" if value is None else ("PASS" if compare(value, threshold) else "MISS")
        out.append({"target": target, "threshold": f"{_SYMBOL[compare]} {threshold:g}", "measured": value,
                    "verdict": verdict})
    return out


def step(settings: Settings, recorder: PartRecorder, deadline: float) -> None:
    from rho_jax.bench import step_bench

    args = step_bench.build_parser().parse_args([
        "--model", str(settings.step_model), "--batch", str(settings.step_batch), "--seq-len", str(settings.seq_len),
        "--dtype", settings.dtype, "--steps", str(settings.steps), "--warmup", "1", "--no-peer",
        "--selection-tokens", str(settings.selection_tokens)])
    recorder.record("setup", f"{args.model.name}, batch {args.batch} x {args.seq_len}, {args.dtype}, attention "
                             f"{args.attention}, {args.steps} timed steps per variant")
    result = step_bench.run(args)
    print(step_bench.format_table(result, args))
    recorder.record("variants", [{"variant": row["variant"], "step_ms": row["step_s"] * 1e3,
                                  "tokens_per_s": row["tokens_per_s"], "time_over_clm": row["ratio"], "mfu": row["mfu"],
                                  "memory_mib": _mib(row["memory_bytes"])} for row in result["rows"]])
    recorder.record("peak_tflops", result["peak_tflops"])
    recorder.record("peak_source", result["peak_source"])
    recorder.record("allocator_peak_gib", None if result["peak_allocator_bytes"] is None
                    else round(result["peak_allocator_bytes"] / 2**30, 2))
    recorder.record("targets", target_rows(result))


# ---- d. the largest batch with remat ----------------------------------------------------------------------


def _synthetic_batch(vocab_size: int, batch: int, seq_len: int, documents: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens in rows of `documents` packed documents of random lengths (segment ids 1..documents)."""
    from rho_jax.batch import batch_from_tokens

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (batch, seq_len + 1))
    segments = np.empty_like(tokens)
    for row in range(batch):
        starts = np.sort(rng.choice(np.arange(1, seq_len), documents - 1, replace=False))  # each in the inputs
        segments[row] = 1 + np.searchsorted(starts, np.arange(seq_len + 1), side="right")
    return batch_from_tokens(tokens, segments)


def _timed_step(run: Callable[[], Any], steps: int) -> float:
    """Median seconds of `steps` calls of `run` after one untimed call (compilation)."""
    from rho_jax.bench import step_bench

    return statistics.median(step_bench._warm_timings(run, steps))


def _try_remat_batch(model: Any, reference: Any, mesh: Any, batch_size: int, settings: Settings, limit: int | None,
                     flops_per_token: float, peak: float | None) -> dict[str, Any]:
    """Compile and run the SLM (online) step at `batch_size` rows; whether it fits, its time and memory."""
    import jax

    from rho_jax.bench import step_bench
    from rho_jax.sharding import batch_sharding
    from rho_jax.slm import SLMConfig

    tokens = batch_size * settings.seq_len
    row: dict[str, Any] = {"batch": batch_size, "tokens": tokens}
    host = _synthetic_batch(model.config.vocab_size, batch_size, settings.seq_len, documents=1)
    try:
        batch = jax.device_put(host, batch_sharding(mesh))
        variant = step_bench.train_variant("SLM (online reference)", model, reference, SLMConfig(), mesh, batch,
                                           tokens * flops_per_token)
        row["memory_mib"] = _mib(variant["memory"])
        if limit is not None and variant["memory"] is not None and variant["memory"] > limit:
            return row | {"fits": False, "error": f"compiled program needs {variant['memory'] / 2**30:.1f} GiB > the "
                                                  f"device's {limit / 2**30:.1f} GiB"}
        seconds = _timed_step(variant["run"], 1)
    except Exception as err:  # XlaRuntimeError and friends: only out-of-memory ends the search quietly
        if not is_out_of_memory(err):
            raise
        return row | {"fits": False, "error": one_line(err, 300)}
    mfu = tokens * flops_per_token / seconds / (peak * 1e12) if peak else None
    return row | {"fits": True, "step_ms": seconds * 1e3, "tokens_per_s": tokens / seconds, "mfu": mfu}


def remat(settings: Settings, recorder: PartRecorder, deadline: float) -> None:
    import jax
    from flax import nnx

    from rho_jax.bench import flops
    from rho_jax.models import Llama, ModelConfig, ModelOptions
    from rho_jax.sharding import MeshConfig, make_mesh

    cfg = ModelConfig.from_file(settings.step_model)
    model = Llama(cfg, ModelOptions(dtype=settings.dtype, remat="full"), rngs=nnx.Rngs(0))
    reference = Llama(cfg, ModelOptions(dtype=settings.dtype), rngs=nnx.Rngs(1))
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    limit = _device_memory_limit()
    per_token = flops.train_flops_per_token(cfg, settings.seq_len) + flops.reference_flops_per_token(cfg, settings.seq_len)
    peak = flops.peak_tflops(jax.devices()[0].device_kind)
    recorder.record("setup", f"SLM (online reference) step, {settings.step_model.name}, remat full, seq {settings.seq_len}, "
                             f"{settings.dtype}; batches {settings.remat_start_batch} doubled, at most "
                             f"{settings.remat_tries} tries; device memory limit {_mib(limit)} MiB")
    tries: list[dict[str, Any]] = []
    batch_size = settings.remat_start_batch
    for _ in range(settings.remat_tries):
        tries.append(_try_remat_batch(model, reference, mesh, batch_size, settings, limit, per_token, peak))
        recorder.record("tries", tries)
        if not tries[-1]["fits"]:
            break
        batch_size *= 2
    fitting = [row["batch"] for row in tries if row["fits"]]
    recorder.record("largest_batch_that_fits", max(fitting) if fitting else None)
    recorder.record("bounded_by", "out of memory at the next batch" if not tries[-1]["fits"]
                    else "the number of tries (larger batches may fit)")


# ---- e. attention implementations in the step ---------------------------------------------------------------


def attention(settings: Settings, recorder: PartRecorder, deadline: float) -> None:
    import jax
    from flax import nnx

    from rho_jax.bench import flops, step_bench
    from rho_jax.models import Llama, ModelConfig, ModelOptions
    from rho_jax.sharding import MeshConfig, batch_sharding, make_mesh
    from rho_jax.slm import SLMConfig

    cfg = ModelConfig.from_file(settings.attention_model)
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    recorder.record("setup", f"CLM step of {settings.attention_model.name} ({cfg.num_hidden_layers} layers), {settings.dtype}, "
                             f"{settings.attention_tokens} tokens per step in rows of 4 packed documents")
    rows: list[dict[str, Any]] = []
    for seq_len in settings.attention_seqs:
        batch_size = max(1, settings.attention_tokens // seq_len)
        tokens = batch_size * seq_len
        batch = jax.device_put(_synthetic_batch(cfg.vocab_size, batch_size, seq_len, documents=4), batch_sharding(mesh))
        for implementation in settings.attention_implementations:
            row: dict[str, Any] = {"seq": seq_len, "batch": batch_size, "attention": implementation}
            model = variant = None  # the previous implementation's state leaves the device before this one's
            try:
                model = Llama(cfg, ModelOptions(dtype=settings.dtype, attention=implementation), rngs=nnx.Rngs(0))
                variant = step_bench.train_variant(f"CLM ({implementation})", model, None, SLMConfig(ratio=1.0), mesh, batch,
                                                   tokens * flops.train_flops_per_token(cfg, seq_len))
                seconds = _timed_step(variant["run"], settings.attention_steps)
                row |= {"step_ms": seconds * 1e3, "tokens_per_s": tokens / seconds, "memory_mib": _mib(variant["memory"])}
            except Exception as err:  # a kernel that refuses the shape or mask, or runs out of memory: a row, not the end
                row["error"] = one_line(err, 300)
            rows.append(row)
            recorder.record("steps", rows)


# ---- f. the trainer against its bare step ---------------------------------------------------------------------


def trainer(settings: Settings, recorder: PartRecorder, deadline: float) -> None:
    from rho_jax.bench import loop_bench

    args = loop_bench.build_parser().parse_args(["--model", str(settings.trainer_model), *settings.trainer_args])
    recorder.record("setup", f"{args.model.name}, CLM, batch {args.batch} x {args.seq_len}, {args.warmup} + "
                             f"{args.rounds} x {args.round_steps} trainer steps, {args.bare_steps} bare steps per round, "
                             f"data {args.data.name} (tokenized on the fly), the trainer's default model options")
    result = loop_bench.run(args)
    print(loop_bench.format_table(result, args))
    recorder.record("trainer_step_ms", result["trainer_s"] * 1e3)
    recorder.record("bare_step_ms", result["bare_s"] * 1e3)
    recorder.record("trainer_tokens_per_s", result["trainer_tokens_per_s"])
    recorder.record("bare_tokens_per_s", result["bare_tokens_per_s"])
    recorder.record("trainer_over_bare_tokens_per_s", result["fraction"])


PART_FUNCTIONS: dict[str, Callable[[Settings, PartRecorder, float], None]] = {
    "environment": environment, "correctness": correctness, "step": step, "remat": remat, "attention": attention,
    "trainer": trainer,
}


def run_one_part(name: str, part_file: Path, deadline: float, smoke: bool) -> int:
    """The child process of one part: run it, recording into `part_file`; on an exception record it and return 1."""
    recorder = PartRecorder(part_file)
    try:
        PART_FUNCTIONS[name](SMOKE if smoke else FULL, recorder, deadline)
    except Exception as err:
        traceback.print_exc()
        recorder.fail(one_line(err, 300))
        return 1
    return 0


def _part_budget(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if name not in PART_NAMES:
        raise argparse.ArgumentTypeError(f"unknown part {name!r}; parts: {', '.join(PART_NAMES)}")
    try:
        value = float(seconds)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need NAME=SECONDS with SECONDS > 0")
    return name, value


def _parts(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PART_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown or text!r}; parts: {', '.join(PART_NAMES)}")
    return names


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"need a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "gpu_check",
                        help="directory of report.json, report.md and parts.log")
    parser.add_argument("--budget-s", type=_positive, default=DEFAULT_BUDGET_S, help="time limit of all parts together")
    parser.add_argument("--parts", type=_parts, default=PART_NAMES, help=f"comma-separated subset of {','.join(PART_NAMES)}")
    parser.add_argument("--part-budget", type=_part_budget, action="append", default=[], metavar="NAME=SECONDS",
                        help="a part's own time limit instead of its default " +
                             ", ".join(f"{p.name}={p.budget_s:g}" for p in PARTS))
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny model and shapes, {SMOKE_PART_BUDGET_S:g} s per part: checks the orchestration on a CPU")
    parser.add_argument("--run-part", choices=PART_NAMES, help=argparse.SUPPRESS)  # a part's own process
    parser.add_argument("--part-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # time.time() at which the part is killed
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_part is not None:
        return run_one_part(args.run_part, args.part_file, args.deadline, args.smoke)
    budgets = dict(args.part_budget)
    parts = [dataclasses.replace(p, budget_s=budgets.get(p.name, SMOKE_PART_BUDGET_S if args.smoke else p.budget_s))
             for p in PARTS if p.name in args.parts]

    def command_of(part: Part, part_file: Path, timeout_s: float) -> list[str]:
        deadline = time.time() + timeout_s
        return [sys.executable, "-m", "rho_jax.bench", "gpu", "--run-part", part.name, "--part-file", str(part_file),
                "--deadline", str(deadline), *(["--smoke"] if args.smoke else [])]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # one process at a time uses the device
    header = {"title": "rho_jax GPU check" + (" (smoke)" if args.smoke else ""),
              "started_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python -m rho_jax.bench gpu " + " ".join(argv if argv is not None else sys.argv[1:])}
    report = run_parts(parts, command_of, args.output, args.budget_s, header, env)
    for part in report["parts"]:
        error = f"  {part['error']}" if part["error"] else ""
        print(f"{part['name']:12s} {part['status']:9s} {part['seconds']:6.0f} s{error}")
    print(f"report: {args.output / 'report.md'}")
    return 0 if all(part["status"] == "ok" for part in report["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
