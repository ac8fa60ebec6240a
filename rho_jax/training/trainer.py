"""Train a reference model (CLM) or an SLM model.

    python -m rho_jax.train --config configs/X.yaml [key.sub=value ...]

Everything that can be wrong with the config, the data, the models or the output directory is
checked before anything is compiled. Rerunning the same command resumes from the newest complete
checkpoint. SIGTERM (preemption) or Ctrl-C saves a checkpoint after the current step and exits with
code 75 (`STOPPED`: rerun to resume). A NaN/Inf loss stops the run without saving (exit code 1);
the last good checkpoint stays as it was.

On several processes (hosts) every process runs this same command; the cluster is detected from
SLURM or the TPU VM, or given with --coordinator_address/--num_processes/--process_id
(`rho_jax.distributed`). All processes read their share of the data and take part in checkpoint
saves; only process 0 writes the run's other files and prints progress. A stop signal reaching any
process stops them all after the same step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rho_jax.batch import BATCH_KEYS
from rho_jax.checkpoint import Checkpointer, UnreadableCheckpoint, interval_crossed
from rho_jax.config import ConfigError, TrainConfig, load_config
from rho_jax.data import (
    eval_batches,
    load_tokenizer,
    positioned_by_step,
    to_global_batch,
    tokenizer_fingerprint,
    train_dataset,
)
from rho_jax.data.scores import SCORE_FIELDS
from rho_jax.distributed import ClusterError, add_cluster_arguments, any_process, barrier, detect_cluster, initialize, is_primary
from rho_jax.evaluate import build_eval_step, evaluate
from rho_jax.model_source import load_params, model_graph, read_model_config, tokenizer_dir
from rho_jax.models import ModelConfig
from rho_jax.optimizer import learning_rate_schedule, make_optimizer
from rho_jax.run_dir import DONE_FILE, check_output_dir, initialize_run_dir
from rho_jax.sharding import BATCH_AXES, batch_sharding, make_mesh, param_shardings
from rho_jax.step import TrainState, build_train_step, jit_train_step, new_train_state, state_shardings
from rho_jax.train_log import TrainLog

log = logging.getLogger("rho_jax.train")

STOPPED = 75  # exit code of a run stopped by a signal after saving a checkpoint (EX_TEMPFAIL: rerun)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


def check_models(cfg: TrainConfig, tokenizer: Any) -> tuple[ModelConfig, ModelConfig | None]:
    """Model and reference architectures, after checking they fit the data and share its tokenizer."""
    model_config = read_model_config(cfg.model, "model")
    if cfg.data.seq_len > model_config.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len {cfg.data.seq_len} exceeds the model's max_position_embeddings "
            f"({model_config.max_position_embeddings})."
        )
    if len(tokenizer) > model_config.vocab_size:
        raise ConfigError(
            f"data.tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model_config.vocab_size}."
        )
    reference_config = None
    if cfg.reference_model is not None:
        reference_config = read_model_config(cfg.reference_model, "reference")
        if reference_config.vocab_size != model_config.vocab_size:
            raise ConfigError(
                f"reference vocab_size {reference_config.vocab_size} != model vocab_size {model_config.vocab_size}: "
                "the reference must share the trained model's tokenizer."
            )
    expected = tokenizer_fingerprint(tokenizer)
    for what, source in (("model", cfg.model), ("reference", cfg.reference_model)):
        directory = tokenizer_dir(source) if source is not None else None
        if directory is None:
            if what == "reference" and source is not None:
                log.warning("reference %s carries no tokenizer files; cannot verify it matches data.tokenizer.", source.path)
            continue
        if tokenizer_fingerprint(load_tokenizer(str(directory))) != expected:
            raise ConfigError(
                f"the {what}'s tokenizer ({directory}) differs from data.tokenizer ({cfg.data.tokenizer}); "
                "the trained model, the reference model and the data must all use the same tokenizer."
            )
    return model_config, reference_config


def check_batch(cfg: TrainConfig, mesh: Mesh) -> None:
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    micro = cfg.batch_size // cfg.train.accumulation_steps
    if micro % shards:
        raise ConfigError(
            f"each micro-batch has {micro} sequences (batch {cfg.batch_size} / accumulation_steps "
            f"{cfg.train.accumulation_steps}), not divisible by the {shards} batch shards of the mesh "
            f"(data x fsdp = {dict(mesh.shape)})."
        )
    processes = jax.process_count()
    if cfg.batch_size % processes:
        raise ConfigError(f"batch of {cfg.batch_size} sequences is not divisible by {processes} processes.")
    local_rows = {row for index in batch_sharding(mesh).addressable_devices_indices_map((micro, 1)).values()
                  for row in range(micro)[index[0]]}
    if len(local_rows) * processes != micro:
        raise ConfigError(
            f"with mesh {dict(mesh.shape)} each process would hold {len(local_rows)} of the {micro} sequences of a "
            f"micro-batch instead of 1/{processes} of them: the tensor axis must not span processes "
            f"(it has {mesh.shape['tensor']} devices, a process {jax.local_device_count()})."
        )


# repr=False: a generated repr would format the train state, whose arrays a running step has donated
# (deleted); `signal.signal` formats the repr of the handler it replaces, a bound method of this class.
@dataclasses.dataclass(repr=False)
class Trainer:
    """A run, fully set up: models placed, step compiled on first use, data positioned."""

    cfg: TrainConfig
    run_dir: Path
    mesh: Mesh
    state: TrainState
    tokens: int
    step_fn: Any
    ref_params: Any
    data_iterator: Any
    data_by_step: bool  # the data position is the step (prepared rows), not the iterator's state
    checkpointer: Checkpointer
    eval_step: Any
    eval_sets: dict[str, list[dict[str, np.ndarray]]]
    resumed: bool
    stop_signal: str | None = None

    @classmethod
    def setup(cls, cfg: TrainConfig) -> Trainer:
        run_dir = check_output_dir(cfg)
        barrier("output-dir-checked")  # before process 0 writes into it
        tokenizer = load_tokenizer(cfg.data.tokenizer)
        model_config, reference_config = check_models(cfg, tokenizer)
        mesh = make_mesh(cfg.mesh)
        check_batch(cfg, mesh)
        process, processes = jax.process_index(), jax.process_count()
        by_step = positioned_by_step(cfg.data)

        def data_from(start_batch: int) -> Any:
            return iter(train_dataset(cfg.data, tokenizer, batch_rows=cfg.batch_size // processes,
                                      process_index=process, process_count=processes, start_batch=start_batch))

        data_iterator = data_from(0)
        eval_rows = cfg.eval.batch_size or cfg.batch_size
        eval_sets = {
            name: eval_batches(source, tokenizer, seq_len=cfg.data.seq_len, global_batch_rows=eval_rows,
                               max_rows=cfg.eval.max_rows, process_index=process, process_count=processes)
            for name, source in cfg.eval.sets.items()
        }
        if is_primary():
            initialize_run_dir(run_dir, cfg, model_config, cfg.data.tokenizer)
        barrier("run-dir-initialized")

        graphdef, abstract_params = model_graph(model_config, cfg.model)
        optimizer_config = cfg.optimizer_config()
        optimizer = make_optimizer(optimizer_config, abstract_params)
        shardings = state_shardings(abstract_params, optimizer, mesh)
        checkpointer = Checkpointer(run_dir, cfg.checkpoint, cfg.tokens_per_step, cfg.total_steps)
        restored = checkpointer.restore_latest(shardings, abstract_params, jax.eval_shape(optimizer.init, abstract_params),
                                               None if by_step else data_iterator)
        if restored is not None:
            state, progress = restored
            tokens = int(progress["tokens"])
            if by_step:
                data_iterator = data_from(int(progress["step"]))
        else:
            params = load_params(cfg.model, model_config, abstract_params, mesh, cfg.train.seed)
            state, tokens = new_train_state(params, optimizer, shardings), 0

        ref_graphdef = ref_params = ref_shardings = None
        if cfg.reference_model is not None:
            ref_graphdef, ref_abstract = model_graph(reference_config, cfg.reference_model)
            ref_params = load_params(cfg.reference_model, reference_config, ref_abstract, mesh, cfg.train.seed)
            ref_shardings = param_shardings(ref_params, mesh)
        step = build_train_step(graphdef, ref_graphdef, cfg.slm, optimizer, learning_rate_schedule(optimizer_config),
                                cfg.train.accumulation_steps, precomputed_reference=cfg.precomputed_reference)
        batch_keys = BATCH_KEYS + (SCORE_FIELDS if cfg.precomputed_reference else ())
        step_fn = jit_train_step(step, shardings, ref_shardings, mesh, batch_keys)
        eval_step = build_eval_step(graphdef, shardings.params, mesh, cfg.slm.ce_chunk_size) if eval_sets else None
        return cls(cfg=cfg, run_dir=run_dir, mesh=mesh, state=state, tokens=tokens, step_fn=step_fn,
                   ref_params=ref_params, data_iterator=data_iterator, data_by_step=by_step, checkpointer=checkpointer,
                   eval_step=eval_step, eval_sets=eval_sets, resumed=restored is not None)

    @property
    def step(self) -> int:
        return int(self.state.step)

    def _request_stop(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    def _save(self) -> None:
        progress = {"step": self.step, "tokens": self.tokens, "seed": self.cfg.train.seed}
        self.checkpointer.save(self.state, progress, None if self.data_by_step else self.data_iterator)

    def _evaluate(self, log_: TrainLog) -> None:
        results = {name: evaluate(self.eval_step, self.state.params, batches, self.mesh)
                   for name, batches in self.eval_sets.items()}
        log_.evaluation(self.step, self.tokens, results)

    def _record(self, metrics: dict[str, Any], step: int, tokens: int, seconds: float) -> dict[str, Any]:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss_selected"]) or not math.isfinite(values["loss_all"]):
            last = self.checkpointer.latest_step()
            raise TrainingDiverged(
                f"loss is {values['loss_selected']} at step {step} (loss over all tokens {values['loss_all']}); "
                f"stopping without saving. Last good checkpoint: "
                + (f"step {last} in {self.checkpointer.directory}." if last is not None else "none.")
            )
        first = {"step": step, "tokens": tokens, "loss": values["loss_selected"]}
        for key in ("loss_selected", "loss_unselected", "loss_all", "selected_fraction"):
            first[key] = values.pop(key)
        first["lr"] = values.pop("learning_rate")
        first["tokens_per_sec"] = self.cfg.tokens_per_step / max(seconds, 1e-9)
        return {**first, **values}

    def run(self) -> int:
        """Train to the end (or until a stop signal); returns the process exit code."""
        cfg = self.cfg
        total_tokens = cfg.total_steps * cfg.tokens_per_step
        log_ = TrainLog(self.run_dir, total_tokens=total_tokens, start_step=self.step if self.resumed else -1, start_tokens=self.tokens,
                        every_steps=cfg.logging.every_steps, progress_bar=cfg.logging.progress_bar,
                        tensorboard=cfg.logging.tensorboard, enabled=is_primary())
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.step >= cfg.total_steps:
                log_.message(f"{self.run_dir} is already complete ({self.step} steps); nothing to do.")
                return 0
            processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
            log_.message(("Resuming" if self.resumed else "Starting") + f" at step {self.step} of {cfg.total_steps} "
                         f"({cfg.batch_size} x {cfg.data.seq_len} tokens per step) on {jax.device_count()} devices"
                         f"{processes} in {self.run_dir}")
            if self.eval_sets and not self.resumed:
                self._evaluate(log_)
            if self._loop(log_):
                log_.message(f"{self.stop_signal}: saved a checkpoint at step {self.step}; "
                             "rerun the same command to resume.")
                return STOPPED
            if self.eval_sets:
                self._evaluate(log_)
            if is_primary():
                (self.run_dir / DONE_FILE).write_text(json.dumps({"step": self.step, "tokens": self.tokens}) + "\n")
            log_.message(f"Done: {self.step} steps, {self.tokens:,} tokens. Checkpoints in {self.checkpointer.directory}")
            return 0
        finally:
            self.checkpointer.close()
            log_.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_agreed(self) -> bool:
        """Whether any process has received a stop signal (so that all stop after the same step)."""
        stopping = any_process(self.stop_signal is not None)
        if stopping and self.stop_signal is None:
            self.stop_signal = "a stop signal on another process"
        return stopping

    def _loop(self, log_: TrainLog) -> bool:
        """Train to the last step; True if all processes agreed to stop earlier (a stop signal).
        A signal arriving after the last step's agreement is ignored, on every process alike."""
        cfg = self.cfg
        sharding = batch_sharding(self.mesh)
        clock = time.perf_counter()
        while self.step < cfg.total_steps:
            batch = to_global_batch(next(self.data_iterator), sharding)
            self.state, metrics = self.step_fn(self.state, batch, self.ref_params)
            before, self.tokens = self.tokens, self.tokens + cfg.tokens_per_step
            step = self.step
            now = time.perf_counter()
            log_.step(self._record(metrics, step, self.tokens, now - clock))
            clock = now
            last = step >= cfg.total_steps
            stopping = self._stop_agreed()
            if last or stopping or interval_crossed(before, self.tokens, cfg.checkpoint.every_tokens):
                self._save()
            if stopping:
                return True
            if self.eval_sets and cfg.eval.every_tokens and not last and interval_crossed(
                    before, self.tokens, cfg.eval.every_tokens):
                self._evaluate(log_)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run configuration (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override any config field, e.g. train.total_steps=100 slm.ratio=0.7")
    add_cluster_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        initialize(detect_cluster(args))
        cfg = load_config(args.config, args.overrides)
        trainer = Trainer.setup(cfg)
    except (ClusterError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except UnreadableCheckpoint as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        return trainer.run()
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
