"""The training run: a `Trainer` set up from a `RunConfig` (preflight, restore or init, reference,
jitted steps), then its loop: step, log, evaluate, checkpoint, stop on a signal or a NaN.

With `model.lora` only LoRA adapters are trained on the frozen model (`rho_jax.training.lora_setup`:
the train state's `params` are the adapters, its `frozen` part the base, which is never saved).

Rerunning the same run resumes from the newest complete checkpoint. SIGTERM (preemption) or Ctrl-C
saves a checkpoint after the current step (on several processes, which agree one step late: after
the next one) and `run` returns `STOPPED` (75: rerun to resume). A NaN/Inf loss raises
`TrainingDiverged` without saving (a step's metrics are checked before it is saved; otherwise one
step late); the last good checkpoint stays as it was. On several processes all take part in
checkpoint saves; only process 0 writes the run's other files and prints progress; a stop signal
reaching any process stops them all after the same step.

The loop keeps the devices busy: the host dispatches step N, then prepares and transfers batch N+1
and reads step N-1's metrics while step N runs (see `Trainer._loop`).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rho_jax.batch import BATCH_KEYS
from rho_jax.data import to_global_batch
from rho_jax.data.scores import SCORE_FIELDS
from rho_jax.evaluation.heldout import build_eval_step, evaluate
from rho_jax.evaluation.in_training import TaskEvaluator
from rho_jax.integrity import write_json_atomic
from rho_jax.models.lora import LoraAdapter
from rho_jax.optimizer import learning_rate_schedule, make_optimizer
from rho_jax.sharding import batch_sharding, param_shardings
from rho_jax.step import TrainState, build_train_step, jit_train_step, new_train_state, state_shardings
from rho_jax.training.agreement import LateAgreement
from rho_jax.training.checkpoint import Checkpointer, interval_crossed
from rho_jax.training.checkpoint_errors import CheckpointSaveFailed
from rho_jax.training.cluster import barrier, is_primary
from rho_jax.training.config import RunConfig
from rho_jax.training.lora_setup import check_same_adapter, initial_adapter, load_lora_state, lora_model_graph
from rho_jax.training.model_sources import load_params, model_graph
from rho_jax.training.preflight import RunInputs, preflight
from rho_jax.training.run_dir import DONE_FILE, initialize_run_dir
from rho_jax.training.run_log import TrainLog

STOPPED = 75  # exit code of a run stopped by a signal after saving a checkpoint (EX_TEMPFAIL: rerun)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


# repr=False: a generated repr would format the train state, whose arrays a running step has donated
# (deleted); `signal.signal` formats the repr of the handler it replaces, a bound method of this class.
@dataclasses.dataclass(repr=False)
class Trainer:
    """A run, fully set up: models placed, step compiled on first use, data positioned."""

    cfg: RunConfig
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
    task_evaluator: TaskEvaluator | None
    resumed: bool
    step: int  # steps taken, counted on the host (equal to `state.step` once the dispatched steps ran)
    stop_signal: str | None = None
    save_failure: CheckpointSaveFailed | None = None  # a failed background save not yet agreed on

    @classmethod
    def setup(cls, cfg: RunConfig) -> Trainer:
        """Preflight (all refusals), then the run directory, the train state (restored or new), the
        reference, and the jitted steps."""
        inputs = preflight(cfg)
        adapter = initial_adapter(cfg.model, inputs.model_config, cfg.train.seed) if cfg.model.lora else None
        if adapter is not None:
            check_same_adapter(inputs.run_dir, adapter.spec)
        barrier("preflight-done")  # every process judged the run directory as it was before process 0 writes it
        if is_primary():
            initialize_run_dir(inputs.run_dir, cfg, inputs.model_config, inputs.tokenizer_dir, inputs.data_fingerprint,
                               adapter.spec if adapter else None)
        barrier("run-dir-initialized")
        if adapter is None:
            (graphdef, abstract_params), abstract_frozen = model_graph(inputs.model_config, cfg.model), None
        else:  # only the adapters are trained: the optimizer and the checkpoints see only them
            graphdef, abstract_params, abstract_frozen = lora_model_graph(inputs.model_config, cfg.model, adapter.spec)
        optimizer_config = cfg.optimizer_config()
        optimizer = make_optimizer(optimizer_config, abstract_params)
        shardings = state_shardings(abstract_params, optimizer, inputs.mesh, abstract_frozen)
        checkpointer = Checkpointer(inputs.run_dir, cfg.checkpoint, cfg.tokens_per_step, cfg.total_steps)
        state, tokens, data_iterator, resumed = _restore_or_init(cfg, inputs, checkpointer, optimizer, shardings,
                                                                 abstract_params, adapter)
        ref_graphdef, ref_params, ref_shardings = _reference(cfg, inputs)
        dropout_seed = cfg.train.seed if adapter is not None and adapter.spec.dropout > 0 else None
        step = build_train_step(graphdef, ref_graphdef, cfg.slm, optimizer, learning_rate_schedule(optimizer_config),
                                cfg.train.accumulation_steps, precomputed_reference=cfg.precomputed_reference,
                                dropout_seed=dropout_seed)
        batch_keys = BATCH_KEYS + (SCORE_FIELDS if cfg.precomputed_reference else ())
        step_fn = jit_train_step(step, shardings, ref_shardings, inputs.mesh, batch_keys)
        eval_step = build_eval_step(graphdef, inputs.mesh, cfg.slm.ce_chunk_size) if inputs.eval_sets else None
        task_evaluator = (TaskEvaluator(inputs.eval_tasks, graphdef, inputs.tokenizer, inputs.mesh,
                                        cfg.eval.generation_batch_size, inputs.run_dir, is_primary())
                          if inputs.eval_tasks else None)
        return cls(cfg=cfg, run_dir=inputs.run_dir, mesh=inputs.mesh, state=state, tokens=tokens, step_fn=step_fn,
                   ref_params=ref_params, data_iterator=data_iterator, data_by_step=inputs.data_by_step,
                   checkpointer=checkpointer, eval_step=eval_step, eval_sets=inputs.eval_sets,
                   task_evaluator=task_evaluator, resumed=resumed, step=int(state.step))

    def _request_stop(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    def _save(self) -> None:
        progress = {"step": self.step, "tokens": self.tokens, "seed": self.cfg.train.seed}
        self.checkpointer.save(self.state, progress, None if self.data_by_step else self.data_iterator)

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates anything (held-out sets or few-shot tasks)."""
        return bool(self.eval_sets) or self.task_evaluator is not None

    def _evaluate(self, log_: TrainLog) -> None:
        if self.eval_sets:
            results = {name: evaluate(self.eval_step, self.state.model_params, batches, self.mesh)
                       for name, batches in self.eval_sets.items()}
            log_.evaluation(self.step, self.tokens, results)
        if self.task_evaluator is not None:
            log_.evaluation(self.step, self.tokens, self.task_evaluator(self.state.model_params, self.step), kind="task")

    def _record(self, output: _StepOutput, seconds: float) -> dict[str, Any]:
        """The log record of a finished step (waits for its metrics); `TrainingDiverged` if its loss is
        not finite. `seconds`: the time since the previous step's metrics were read."""
        step, tokens = output.step, output.tokens
        values = {k: float(v) for k, v in jax.device_get(output.metrics).items()}
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
        log_ = TrainLog(self.run_dir, total_tokens=total_tokens, start_step=self.step if self.resumed else -1,
                        start_tokens=self.tokens, every_steps=cfg.logging.every_steps, progress_bar=cfg.logging.progress_bar,
                        tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb, run_config=cfg.to_dict(),
                        enabled=is_primary())
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.step >= cfg.total_steps:
                log_.message(f"{self.run_dir} is already complete ({self.step} steps); nothing to do.")
                return 0
            processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
            log_.message(("Resuming" if self.resumed else "Starting") + f" at step {self.step} of {cfg.total_steps} "
                         f"({cfg.batch_size} x {cfg.data.seq_len} tokens per step) on {jax.device_count()} devices"
                         f"{processes} in {self.run_dir}")
            if self.evaluates and not self.resumed:
                self._evaluate(log_)
            if self._loop(log_):
                self.checkpointer.finish()
                log_.message(f"{self.stop_signal}: saved a checkpoint at step {self.step}; "
                             "rerun the same command to resume.")
                return STOPPED
            if self.evaluates:
                self._evaluate(log_)
            self.checkpointer.finish()  # the final checkpoint is committed before the run says it is done
            if is_primary():
                write_json_atomic(self.run_dir / DONE_FILE, {"step": self.step, "tokens": self.tokens})
            log_.message(f"Done: {self.step} steps, {self.tokens:,} tokens. Checkpoints in {self.checkpointer.directory}")
            return 0
        finally:
            self.checkpointer.close()
            log_.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_agreed(self, agreement: LateAgreement) -> bool:
        """Whether the processes agreed to stop (a stop signal on any of them; all stop after the same
        step). On several processes this is the agreement on the flags raised up to the previous call
        (`LateAgreement`: no wait for the running step), on one process those raised up to now.
        A background checkpoint save that failed on any process raises `CheckpointSaveFailed` on all."""
        if self.save_failure is None:
            try:
                self.checkpointer.poll()
            except CheckpointSaveFailed as err:
                self.save_failure = err
        stopping, failed = agreement.exchange(self.stop_signal is not None, self.save_failure is not None)
        if failed:
            raise self.save_failure or CheckpointSaveFailed(
                "a checkpoint save failed on another process (see its output); the earlier checkpoints are intact. "
                "Rerun to resume.")
        if stopping and self.stop_signal is None:
            self.stop_signal = "a stop signal on another process"
        return stopping

    def _loop(self, log_: TrainLog) -> bool:
        """Train to the last step; True if all processes agreed to stop earlier (a stop signal).
        A signal arriving after the last step's agreement is ignored, on every process alike.

        The host never waits for the step it has just dispatched: while step N runs, it reads the
        next batch and starts its transfer, then fetches, checks (NaN) and logs step N-1's metrics.
        Step numbers, tokens, checkpoint and eval decisions come from host-side counters. A step that
        is saved (interval, last, stop) has its own metrics checked first, and the next batch is only
        drawn after the save, so a saved data position is the saved step's.
        """
        cfg = self.cfg
        sharding = batch_sharding(self.mesh)
        agreement = LateAgreement(2)
        clock = _Clock()
        batch = to_global_batch(next(self.data_iterator), sharding)
        previous: _StepOutput | None = None
        while True:
            self.state, metrics = self.step_fn(self.state, batch, self.ref_params)
            before, self.tokens = self.tokens, self.tokens + cfg.tokens_per_step
            self.step += 1
            current = _StepOutput(self.step, self.tokens, metrics)
            last = self.step >= cfg.total_steps
            stopping = self._stop_agreed(agreement)
            save = last or stopping or interval_crossed(before, self.tokens, cfg.checkpoint.every_tokens)
            if not save:
                batch = to_global_batch(next(self.data_iterator), sharding)  # transfers while the step runs
            if previous is not None:
                log_.step(self._record(previous, clock.lap()))
            previous = current
            if save:
                log_.step(self._record(current, clock.lap()))
                previous = None
                self._save()
                if stopping:
                    return True
                if last:
                    return False
                batch = to_global_batch(next(self.data_iterator), sharding)
            if self.evaluates and cfg.eval.every_tokens and interval_crossed(before, self.tokens, cfg.eval.every_tokens):
                self._evaluate(log_)


@dataclasses.dataclass(frozen=True)
class _StepOutput:
    """A dispatched step: its number and tokens seen after it (host counters), its metrics (device arrays)."""

    step: int
    tokens: int
    metrics: dict[str, Any]


class _Clock:
    """Seconds between successive `lap` calls (the first lap counts from construction)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def _restore_or_init(cfg: RunConfig, inputs: RunInputs, checkpointer: Checkpointer, optimizer: Any,
                     shardings: TrainState, abstract_params: Any,
                     adapter: LoraAdapter | None) -> tuple[TrainState, int, Any, bool]:
    """(state, tokens seen, data iterator, resumed): from the newest readable checkpoint (the data
    positioned after its step), else fresh at step 0. A LoRA run (`adapter`: its initial adapter)
    loads its frozen base either way; a checkpoint replaces only the adapters."""
    data_iterator = inputs.data_iterator
    restored = checkpointer.restore_latest(shardings, abstract_params, jax.eval_shape(optimizer.init, abstract_params),
                                           None if inputs.data_by_step else data_iterator)
    if adapter is None:
        frozen = None
    else:
        initial, frozen = load_lora_state(cfg.model, inputs.model_config, adapter, inputs.mesh, cfg.train.seed)
    if restored is None:
        params = (load_params(cfg.model, inputs.model_config, abstract_params, inputs.mesh, cfg.train.seed)
                  if adapter is None else initial)
        return new_train_state(params, optimizer, shardings, frozen), 0, data_iterator, False
    state, progress = restored
    state = dataclasses.replace(state, frozen=frozen)
    if inputs.data_by_step:
        data_iterator = inputs.data_from(int(progress["step"]))
    return state, int(progress["tokens"]), data_iterator, True


def _reference(cfg: RunConfig, inputs: RunInputs) -> tuple[Any, Any, Any]:
    """(graph definition, parameters, shardings) of the online reference, or three Nones."""
    if cfg.online_reference is None:
        return None, None, None
    ref_graphdef, ref_abstract = model_graph(inputs.reference_config, cfg.online_reference)
    ref_params = load_params(cfg.online_reference, inputs.reference_config, ref_abstract, inputs.mesh, cfg.train.seed)
    return ref_graphdef, ref_params, param_shardings(ref_params, inputs.mesh)


