"""Training checkpoints with orbax: token-interval saves, async writes, retention, safe resume.

Layout: `<run>/checkpoints/<step>/` with four orbax items
    params     `{param_path: array}` (same tree as a rho_jax model directory's `params/`)
    opt_state  the optax state
    progress   JSON: step, tokens seen, seed
    data       the grain iterator state of every process (one JSON file per process); only for data
               whose position is per process (raw documents; prepared rows resume from `step`)
Every process takes part in each save and restore: it writes and reads its own shards of the
arrays (orbax multi-host), which therefore need a directory that all processes share. Arrays are
restored into the shardings of the current mesh, whatever mesh saved them.
orbax writes each checkpoint into a temporary directory and renames it when complete, so a save
interrupted by a kill never looks complete. On resume the newest checkpoint that restores is used;
one that fails to restore (e.g. truncated by hand or by a full disk) is moved, with a warning, to
`<run>/checkpoints_unreadable/` (never deleted), and the next older one is tried. With several
processes a failed restore cannot be retried in step (the other processes are inside orbax's
collective restore): the process that failed moves the checkpoint aside and stops the run with
`UnreadableCheckpoint`; rerunning the command resumes from the next older checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from rho_jax.step import TrainState
from rho_jax.training.cluster import any_process
from rho_jax.training.config import CheckpointConfig, ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"
TMP_MARKER = ".orbax-checkpoint-tmp"


def interval_crossed(tokens_before: int, tokens_after: int, every_tokens: int) -> bool:
    """True when a multiple of `every_tokens` lies in (tokens_before, tokens_after]."""
    return tokens_after // every_tokens > tokens_before // every_tokens


def interval_save_steps(every_tokens: int, tokens_per_step: int, total_steps: int) -> list[int]:
    """Steps at which token-interval checkpoints are saved: the first step reaching each multiple."""
    steps = []
    for step in range(1, total_steps + 1):
        if interval_crossed((step - 1) * tokens_per_step, step * tokens_per_step, every_tokens):
            steps.append(step)
    return steps


def permanent_steps(cfg: CheckpointConfig, tokens_per_step: int, total_steps: int) -> list[int]:
    """Every `keep_every`-th token-interval checkpoint (kept forever); [] when keep_every is unset."""
    if cfg.keep_every is None:
        return []
    saves = interval_save_steps(cfg.every_tokens, tokens_per_step, total_steps)
    return saves[cfg.keep_every - 1 :: cfg.keep_every]


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _params_target(abstract_params: nnx.State, shardings: nnx.State) -> dict:
    """The restore target of a `params` item: `{param_path: ShapeDtypeStruct}` with shardings."""
    return _abstract(nnx.to_pure_dict(abstract_params), nnx.to_pure_dict(shardings))


def _params_state(abstract_params: nnx.State, restored: dict) -> nnx.State:
    """A parameter state shaped like `abstract_params` holding the restored arrays."""
    params = jax.tree.map(lambda x: x, abstract_params)
    nnx.replace_by_pure_dict(params, restored)
    return params


class UnreadableCheckpoint(RuntimeError):
    """A multi-process run found its newest checkpoint unreadable (now moved aside); rerun to resume."""


def incomplete_saves(directory: Path) -> list[Path]:
    """Temporary directories of saves that never finished (process killed while writing)."""
    return sorted(p for p in directory.glob(f"*{TMP_MARKER}*")) if directory.is_dir() else []


class Checkpointer:
    """Saves and restores training checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, cfg: CheckpointConfig, tokens_per_step: int, total_steps: int):
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / CHECKPOINTS_DIR
        keep: list[Any] = [policies.LatestN(cfg.keep_last)]
        permanent = permanent_steps(cfg, tokens_per_step, total_steps)
        if permanent:
            keep.append(policies.CustomSteps(permanent))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save,
            preservation_policy=policies.AnyPreservationPolicy(keep),
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "params": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "progress": ocp.JsonCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        })
        for path in incomplete_saves(self.directory):
            log.warning("Skipping %s: a checkpoint save that never completed (left in place, not loaded).", path)

    def save(self, state: TrainState, progress: dict[str, Any], data_iterator: Any | None) -> None:
        """Start saving (returns once arrays are copied off the devices; files are written in the
        background). `data_iterator`: the stream whose state to save, None when `progress` locates it."""
        step = int(progress["step"])
        if step in self.manager.all_steps():
            return
        items = dict(
            params=ocp.args.StandardSave(nnx.to_pure_dict(state.params)),
            opt_state=ocp.args.StandardSave(state.opt_state),
            progress=ocp.args.JsonSave(progress),
        )
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, force=True, args=ocp.args.Composite(**items))

    def _check_data_state(self, step: int) -> None:
        """The checkpoint must hold every process's data-iterator state; a different process count is
        a clear error on every process (not an unreadable checkpoint to move aside)."""
        directory = self.directory / str(step) / "data"
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        saved = sorted(p.name for p in directory.glob("process_*-of-*.json"))
        if any_process(bool(saved) and name not in saved):
            raise ConfigError(
                f"checkpoint {self.directory / str(step)} was saved by {len(saved)} process(es) reading raw documents "
                f"({', '.join(saved)}), whose position in the data is per process; this run has "
                f"{jax.process_count()}. Resume with {len(saved)} process(es), or train from prepared rows "
                "(python -m rho_jax.data.prepare), whose position does not depend on the number of processes."
            )

    def restore_latest(self, state_shardings: TrainState, abstract_params: nnx.State, abstract_opt_state: Any,
                       data_iterator: Any | None) -> tuple[TrainState, dict[str, Any]] | None:
        """(state, progress) of the newest readable checkpoint, with `data_iterator` (if not None) set
        to its position; None if there is no checkpoint. Unreadable checkpoints are moved aside."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            items = dict(
                params=ocp.args.StandardRestore(_params_target(abstract_params, state_shardings.params)),
                opt_state=ocp.args.StandardRestore(_abstract(abstract_opt_state, state_shardings.opt_state)),
                progress=ocp.args.JsonRestore(),
            )
            if data_iterator is not None:
                self._check_data_state(step)
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as err:  # noqa: BLE001 - any failure means this checkpoint is unusable
                self._set_aside(step, err)
                if jax.process_count() > 1:
                    raise UnreadableCheckpoint(
                        f"checkpoint step {step} could not be restored on process {jax.process_index()} ({err}); it "
                        f"was moved to {self.run_dir / UNREADABLE_DIR}. Rerun the same command to resume from the "
                        "next older checkpoint.") from err
                continue
            params = _params_state(abstract_params, restored["params"])
            progress = dict(restored["progress"])
            step_array = jax.device_put(jax.numpy.asarray(progress["step"], jax.numpy.int32), state_shardings.step)
            return TrainState(step=step_array, params=params, opt_state=restored["opt_state"]), progress
        return None

    def _set_aside(self, step: int, err: Exception) -> None:
        source = self.directory / str(step)
        target = self.run_dir / UNREADABLE_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("Checkpoint %s cannot be restored (%s: %s); moving it to %s.",
                    source, type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "", target)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            source.rename(target)  # atomic: whichever process fails first moves it, the others find it gone
        except FileNotFoundError:
            pass
        if jax.process_count() == 1:
            self.manager.reload()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_checkpoint_params(checkpoint_dir: str | Path, abstract_params: nnx.State, shardings: nnx.State) -> nnx.State:
    """The parameters saved in one checkpoint directory `<run>/checkpoints/<step>`, restored
    directly into `shardings`."""
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(Path(checkpoint_dir).absolute() / "params",
                                        _params_target(abstract_params, shardings))
    return _params_state(abstract_params, restored)


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of the checkpoint directories `<run>/checkpoints/<step>`, ascending."""
    directory = Path(run_dir) / CHECKPOINTS_DIR
    return sorted(int(p.name) for p in directory.glob("*") if p.is_dir() and p.name.isdigit()) if directory.is_dir() else []


def latest_checkpoint_dir(run_dir: str | Path) -> Path:
    """`<run>/checkpoints/<newest step>`; a clear error if the run has none."""
    directory = Path(run_dir) / CHECKPOINTS_DIR
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"{run_dir} has no completed checkpoint under {CHECKPOINTS_DIR}/.")
    return directory / str(steps[-1])

