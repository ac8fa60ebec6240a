"""Benchmark the training loop against its bare step: how much of the device's throughput the trainer keeps.

    python -m rho_jax.bench loop [--model configs/models/tiny-cpu.yaml] [--data data/tiny] [--batch 8]
                                 [--seq-len 256] [--rounds 8] [--round-steps 6] [--bare-steps 4]
                                 [--warmup 3] [--slm-ratio R]

One real `Trainer` run (scratch model, the `--data` directory's documents tokenized on the fly,
metrics logged every step, no evaluation, one checkpoint at the end) of warmup + rounds x
round-steps steps. Round by round, so that another job's burst on a shared machine hits both alike:
    bare step  `bare-steps` calls of the trainer's own jitted step on the round's first batch, back
               to back from a copy of the state, each waited for
    trainer    the round's steps as the loop runs them; the times between successive dispatches,
               without the first two of the round (the pipeline refilling after the bare steps)
Reports the median and mean step time of both, tokens/s at the medians, and their ratio trainer /
bare step (1.0: the loop never makes the device wait).
With --slm-ratio R the step is SLM's, with a one-step CLM run of the same model as online reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from rho_jax.training.config import RunConfig
from rho_jax.training.schema import build
from rho_jax.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "configs" / "models" / "tiny-cpu.yaml"
DEFAULT_DATA = ROOT / "data" / "tiny"


def run_config(args: argparse.Namespace, output_dir: Path) -> RunConfig:
    """A scratch run on `args.data` (its tokenizer/ and *.jsonl sources) that only trains and logs."""
    sources = sorted(args.data.glob("*.jsonl"))
    if not sources or not (args.data / "tokenizer").is_dir():
        raise SystemExit(f"--data {args.data}: need a tokenizer/ directory and at least one *.jsonl file of documents.")
    data = {
        "output_dir": str(output_dir),
        "model": {"init": "scratch", "config": str(args.model)},
        "data": {"tokenizer": str(args.data / "tokenizer"), "seq_len": args.seq_len,
                 "sources": [{"name": path.stem, "paths": [str(path)], "weight": 1} for path in sources]},
        "train": {"batch_size": args.batch, "total_steps": args.warmup + args.rounds * args.round_steps},
        "optimizer": {"learning_rate": 1e-3, "warmup_steps": 1},
        "checkpoint": {"every_tokens": 2**62, "keep_last": 1},
        "logging": {"every_steps": 10, "progress_bar": False, "tensorboard": False},
        "eval": {"sets": {}},
    }
    if args.slm_ratio is not None:  # the untrained model as its own reference: an online-reference SLM step
        data["reference"] = {"init": "checkpoint", "path": str(output_dir.parent / "reference")}
        data["slm"] = {"ratio": args.slm_ratio}
    return build(RunConfig, data, "config")


def _bare_step_seconds(step_fn: Any, state: Any, batch: dict[str, jax.Array], ref_params: Any,
                       steps: int) -> list[float]:
    """Seconds of each of `steps` back-to-back calls of `step_fn` on `batch`, each waited for (a wait
    costs one dispatch, microseconds against the step), from a copy of `state` (the step donates its
    input; `state` stays as it was)."""
    state = jax.tree.map(jnp.copy, state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch, ref_params)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return times


class _Interleaved:
    """The trainer's step function, timed: it records each dispatch and, at the start of every round
    after the warmup, first runs `bare_steps` timed bare steps (the trainer's pipeline restarts after
    them; its first two intervals in each round are not counted)."""

    def __init__(self, step_fn: Any, warmup: int, round_steps: int, bare_steps: int):
        self.step_fn, self.warmup, self.round_steps, self.bare_steps = step_fn, warmup, round_steps, bare_steps
        self.dispatched: list[float] = []
        self.bare: list[float] = []

    def __call__(self, state: Any, batch: dict[str, jax.Array], ref_params: Any) -> Any:
        index = len(self.dispatched)
        if index >= self.warmup and (index - self.warmup) % self.round_steps == 0:
            self.bare += _bare_step_seconds(self.step_fn, state, batch, ref_params, self.bare_steps)
        self.dispatched.append(time.perf_counter())
        return self.step_fn(state, batch, ref_params)

    def loop_intervals(self) -> list[float]:
        """Steady-state seconds between successive dispatches of the trainer, every round."""
        out = []
        for start in range(self.warmup, len(self.dispatched), self.round_steps):
            times = self.dispatched[start + 2:start + self.round_steps]
            out += [b - a for a, b in zip(times, times[1:])]
        return out


def _reference_run(args: argparse.Namespace, tmp: Path) -> None:
    """A one-step CLM run in tmp/reference (the reference model of --slm-ratio)."""
    reference = argparse.Namespace(**{**vars(args), "slm_ratio": None, "warmup": 1, "rounds": 0})
    if Trainer.setup(run_config(reference, tmp / "reference")).run() != 0:
        raise SystemExit("the reference run for --slm-ratio failed.")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.rounds < 1 or args.round_steps < 4 or args.bare_steps < 1 or args.warmup < 1:
        raise SystemExit(f"need --rounds >= 1, --round-steps >= 4, --bare-steps >= 1 and --warmup >= 1; got "
                         f"{args.rounds}, {args.round_steps}, {args.bare_steps}, {args.warmup}.")
    with tempfile.TemporaryDirectory() as tmp:
        if args.slm_ratio is not None:
            _reference_run(args, Path(tmp))
        cfg = run_config(args, Path(tmp) / "run")
        trainer = Trainer.setup(cfg)
        timed = _Interleaved(trainer.step_fn, args.warmup, args.round_steps, args.bare_steps)
        trainer.step_fn = timed
        if trainer.run() != 0:
            raise SystemExit("the benchmark's training run did not finish.")
    loop, bare = timed.loop_intervals(), timed.bare
    tokens, trainer_seconds, bare_seconds = cfg.tokens_per_step, statistics.median(loop), statistics.median(bare)
    return {"tokens_per_step": tokens, "trainer_s": trainer_seconds, "bare_s": bare_seconds,
            "trainer_mean_s": statistics.fmean(loop), "bare_mean_s": statistics.fmean(bare),
            "trainer_tokens_per_s": tokens / trainer_seconds, "bare_tokens_per_s": tokens / bare_seconds,
            "fraction": bare_seconds / trainer_seconds}


def format_table(result: dict[str, Any], args: argparse.Namespace) -> str:
    step = "CLM" if args.slm_ratio is None else f"SLM (online reference, ratio {args.slm_ratio})"
    return "\n".join([
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()} | model {args.model.name} | {step} "
        f"| batch {args.batch}x{args.seq_len} | {args.rounds} rounds of {args.bare_steps} bare + {args.round_steps} trainer "
        f"steps after {args.warmup}",
        "",
        "| loop | step time (median) | step time (mean) | tokens/s (median) |",
        "|---|---|---|---|",
        f"| trainer (steady state) | {result['trainer_s'] * 1e3:.1f} ms | {result['trainer_mean_s'] * 1e3:.1f} ms "
        f"| {result['trainer_tokens_per_s']:,.0f} |",
        f"| bare jitted step | {result['bare_s'] * 1e3:.1f} ms | {result['bare_mean_s'] * 1e3:.1f} ms "
        f"| {result['bare_tokens_per_s']:,.0f} |",
        "",
        f"trainer / bare step tokens/s (medians) = {result['fraction']:.3f}",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.bench loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model config (YAML or config.json)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with tokenizer/ and *.jsonl documents")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of bare steps then trainer steps")
    parser.add_argument("--round-steps", type=int, default=6, help="trainer steps per round (the last - 2 timed)")
    parser.add_argument("--bare-steps", type=int, default=4, help="bare steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps of the trainer (compilation)")
    parser.add_argument("--slm-ratio", type=float, default=None, help="train SLM with this ratio (default: CLM)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(format_table(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
