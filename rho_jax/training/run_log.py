"""What a run reports while it trains: metrics.jsonl, eval.jsonl, TensorBoard, Weights & Biases,
progress bar, log lines.

Only process 0 writes files, logs to W&B or prints; other processes get a `TrainLog(enabled=False)`.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rho_jax.integrity import write_text_atomic
from rho_jax.training.config import WandbConfig
from rho_jax.training.run_dir import EVAL_FILE, METRICS_FILE, TENSORBOARD_DIR, read_jsonl

# In the run directory: the W&B run id, so that a resumed run goes on logging to the same W&B run.
WANDB_ID_FILE = "wandb_id"


class _DropOrbaxThreadErrors(logging.Filter):
    """orbax's background threads log every failed write with its whole traceback (hundreds of
    lines for one full disk). The failure reaches the trainer, which reports it in one line
    (`CheckpointSaveFailed`, or a restore's warning), so these records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "/orbax/" in record.pathname.replace("\\", "/"))


def _ignore_closed_event_loops(unraisable: Any, previous: Any = sys.unraisablehook) -> None:
    """TensorStore callbacks that fire after a failed save's event loop closed raise 'Event loop
    is closed' in no one's frame; they add nothing to the reported failure."""
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
        return
    previous(unraisable)


class _DropOrbaxTaskErrors(logging.Filter):
    """asyncio reports each failed orbax write task or gathering future ("Task exception was never
    retrieved", "_GatheringFuture exception was never retrieved", with its traceback) when it is garbage
    collected; the same failure reaches the trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.split("\n", 1)[0].endswith("exception was never retrieved"):
            return True
        details = message + ("".join(traceback.format_exception(*record.exc_info)) if record.exc_info else "")
        return "/orbax/" not in details and ".orbax-checkpoint-tmp/" not in details


def quiet_background_errors() -> None:
    """Keep a failing checkpoint save or restore to the one message rho_jax prints about it."""
    for name, kind in (("absl", _DropOrbaxThreadErrors), ("asyncio", _DropOrbaxTaskErrors)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    sys.unraisablehook = _ignore_closed_event_loops


def format_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def drop_records_after(path: Path, step: int) -> None:
    """Remove the records of steps after `step` from a JSON-lines file (steps a resumed run redoes),
    and a last line cut short by a kill. The file is replaced atomically: a kill during the rewrite
    leaves the old or the new file, never a torn one."""
    if not path.exists():
        return
    records = read_jsonl(path)
    kept = [record for record in records if record["step"] <= step]
    text = "".join(json.dumps(record) + "\n" for record in kept)
    if text != path.read_text():
        write_text_atomic(path, text)


def start_wandb(run_dir: Path, wandb_config: WandbConfig, run_config: dict[str, Any]) -> Any:
    """A W&B run (`wandb.init`) logging into `run_dir/wandb`, with `run_config` as its config.

    Its id is kept in `run_dir/WANDB_ID_FILE`: a resumed run continues the same W&B run
    (`resume="allow"`). W&B only appends, so steps that a killed run logged after its last
    checkpoint keep their first values there (metrics.jsonl holds the redone ones).
    """
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    if not id_file.exists():
        id_file.write_text(secrets.token_hex(4) + "\n")
    return wandb.init(project=wandb_config.project, entity=wandb_config.entity, name=wandb_config.name,
                      tags=list(wandb_config.tags), mode=wandb_config.mode, dir=str(run_dir), config=run_config,
                      id=id_file.read_text().strip(), resume="allow")


class TrainLog:
    """Appends step and eval records, mirrors them to TensorBoard and W&B, shows progress and log lines."""

    def __init__(self, run_dir: Path, *, total_tokens: int, start_step: int, start_tokens: int, every_steps: int,
                 progress_bar: bool, tensorboard: bool, wandb: WandbConfig | None = None,
                 run_config: dict[str, Any] | None = None, enabled: bool = True):
        """Records of steps after `start_step` (left by a run that was killed after its last
        checkpoint) are dropped, so the files hold one history without repeated steps. With `wandb`
        set, records also go to a W&B run whose config is `run_config` (see `start_wandb`)."""
        self.enabled = enabled
        self.every_steps = every_steps
        self.total_tokens = total_tokens
        self.clock_start: tuple[float, int] | None = None  # (time, tokens) at the first logged step
        if not enabled:
            return
        for name in (METRICS_FILE, EVAL_FILE):
            drop_records_after(run_dir / name, start_step)
        self.wandb_run = start_wandb(run_dir, wandb, run_config or {}) if wandb is not None else None
        self.metrics_file = open(run_dir / METRICS_FILE, "a")
        self.eval_file = open(run_dir / EVAL_FILE, "a")
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        self.bar = tqdm(total=total_tokens, initial=start_tokens, unit="tok", unit_scale=True, dynamic_ncols=True,
                        disable=not progress_bar, file=sys.stderr, smoothing=0.1)

    def eta_seconds(self, tokens: int) -> float:
        """Remaining time at the rate since the first logged step (so compilation is not counted)."""
        now = time.perf_counter()
        if self.clock_start is None:
            self.clock_start = (now, tokens)
        started, start_tokens = self.clock_start
        done = tokens - start_tokens
        return (self.total_tokens - tokens) * (now - started) / done if done > 0 else math.inf

    def step(self, record: dict[str, Any]) -> None:
        """One training step's metrics (must hold step, tokens, loss, selected_fraction, lr, tokens_per_sec)."""
        if not self.enabled:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "tokens") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])
        if self.wandb_run is not None:
            self.wandb_run.log({key: value for key, value in record.items() if key != "step"}, step=record["step"])
        eta = self.eta_seconds(record["tokens"])
        self.bar.update(record["tokens"] - self.bar.n)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", sel=f"{record['selected_fraction']:.3f}", refresh=False)
        if record["step"] % self.every_steps == 0:
            self.message(
                f"step {record['step']} | tokens {format_count(record['tokens'])}/{format_count(self.total_tokens)} | "
                f"loss {record['loss']:.4f} (all {record['loss_all']:.4f}) | selected {record['selected_fraction']:.3f} | "
                f"lr {record['lr']:.3g} | {format_count(record['tokens_per_sec'])} tok/s | "
                f"ETA {format_duration(eta)}"
            )

    def evaluation(self, step: int, tokens: int, results: dict[str, dict[str, float]], kind: str = "set") -> None:
        """Results of one evaluation: held-out sets {name: {"loss", "num_tokens"}} (`kind` "set") or
        few-shot tasks {name: {"accuracy" (%), "num_samples", ...}} (`kind` "task")."""
        if not self.enabled:
            return
        metric = {"set": "loss", "task": "accuracy"}[kind]
        for name, result in results.items():
            self.eval_file.write(json.dumps({"step": step, "tokens": tokens, kind: name, **result}) + "\n")
            if self.writer is not None:
                self.writer.add_scalar(f"eval/{name}/{metric}", result[metric], step)
        if self.wandb_run is not None:
            self.wandb_run.log({f"eval/{name}/{metric}": result[metric] for name, result in results.items()}, step=step)
        self.eval_file.flush()
        summary = ", ".join(f"{name} {metric} {r[metric]:.4g}" for name, r in results.items())
        self.message(f"eval at step {step}: {summary}")

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.metrics_file.close()
        self.eval_file.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
