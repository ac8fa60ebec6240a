"""Training checkpoints with orbax: token-interval saves, async writes, retention, safe resume.

Layout: `<run>/checkpoints/<step>/` with four orbax items
    params     `{param_path: array}` (same tree as a rho_jax model directory's `params/`); in a LoRA
               run only the adapters' (`layers/<block>/<projection>/lora_a|lora_b`), never the base
    opt_state  the optax state (of what `params` holds)
    progress   JSON: step, tokens seen, seed
    data       the grain iterator state of every process (one JSON file per process); only for data
               whose position is per process (raw documents; prepared rows resume from `step`)
Every process takes part in each save and restore: it writes and reads its own shards of the
arrays (orbax multi-host), which therefore need a directory that all processes share. Arrays are
restored into the shardings of the current mesh, whatever mesh saved them.
orbax writes each checkpoint into a temporary directory and renames it when complete, so a save
interrupted by a kill never looks complete. Once a save has committed, the size and sha256 of
every file in it are recorded in `<run>/checkpoint_manifests/<step>.json` (process 0, in the
trainer's thread at the next step boundary or at the end).

Saving fails loudly: a background save that failed (disk full, quota, I/O error) raises
`CheckpointSaveFailed` at the next `poll` (every step boundary) or at `finish` (before a run
declares itself done), with one message saying which checkpoint, where, and how much space it
needed; a save is not started when the file system has less free space than the last checkpoint
took. Earlier checkpoints are never touched by a failed save.

On resume the newest checkpoint that restores is used. One whose files differ from its manifest
(missing, truncated, overwritten) is damaged: it is moved, with a one-line warning, to
`<run>/checkpoints_unreadable/` (never deleted), and the next older one is tried. A restore that
fails although the files match their checksums (or, without a manifest, with an I/O error that
may be transient) is not evidence of damage: the checkpoint stays in place and the run stops with
`CheckpointRestoreFailed`. A run whose checkpoints are all unreadable stops with
`UnreadableCheckpoint` rather than start over from step 0. With several processes a failed restore
cannot be retried in step (the other processes are inside orbax's collective restore): the process
that failed moves the checkpoint aside and stops the run with `UnreadableCheckpoint`; rerunning
the command resumes from the next older checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from rho_jax.integrity import directory_manifest, manifest_bytes, verify_manifest, write_json_atomic
from rho_jax.models import ModelConfig
from rho_jax.models.lora import LoraAdapter, LoraSpec, adapter_from_params, adapter_params, init_lora
from rho_jax.step import TrainState
from rho_jax.training.checkpoint_errors import (
    CheckpointRestoreFailed,
    CheckpointSaveFailed,
    UnreadableCheckpoint,
    is_transient,
    one_line,
    os_reason,
)
from rho_jax.training.cluster import any_process
from rho_jax.training.config import CheckpointConfig, ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"
MANIFESTS_DIR = "checkpoint_manifests"
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
        self.manifests = self.run_dir / MANIFESTS_DIR
        self._unrecorded: list[int] = []  # committed or committing steps without a manifest yet
        self._last_bytes = self._recorded_bytes()
        for path in incomplete_saves(self.directory):
            log.warning("Skipping %s: a checkpoint save that never completed (left in place, not loaded).", path)

    def save(self, state: TrainState, progress: dict[str, Any], data_iterator: Any | None) -> None:
        """Start saving (returns once arrays are copied off the devices; files are written in the
        background). `data_iterator`: the stream whose state to save, None when `progress` locates it."""
        step = int(progress["step"])
        if step in self.manager.all_steps():
            return
        # orbax waits for the previous save before starting one anyway; waiting here first lets a failure
        # of that save be reported as its own (not as this step's).
        self._finished_or_raise()
        self._check_free_space(step)
        items = dict(
            params=ocp.args.StandardSave(nnx.to_pure_dict(state.params)),
            opt_state=ocp.args.StandardSave(state.opt_state),
            progress=ocp.args.JsonSave(progress),
        )
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            self.manager.save(step, force=True, args=ocp.args.Composite(**items))
        except Exception as err:  # noqa: BLE001 - a synchronous save (or its start) failed
            raise CheckpointSaveFailed(self._save_failure(step, err)) from None
        self._unrecorded.append(step)

    def poll(self) -> None:
        """Between steps, without waiting: raise `CheckpointSaveFailed` if the last background save
        failed; record the manifests of saves that have committed."""
        if self.manager.is_saving_in_progress():
            return
        self._finished_or_raise()

    def finish(self) -> None:
        """Wait for the last save; raise `CheckpointSaveFailed` if it failed, else record its manifest.
        A run is only done after this returns."""
        self._finished_or_raise()

    def _finished_or_raise(self) -> None:
        try:
            self.manager.wait_until_finished()  # returns at once when no save runs; raises if the last one failed
            self.manager.check_for_errors()
        except Exception as err:  # noqa: BLE001 - whatever orbax or TensorStore raised
            step = self._unrecorded[-1] if self._unrecorded else None  # the newest save is the one that failed
            self._record_manifests()  # the earlier ones that did commit keep their checksums
            raise CheckpointSaveFailed(self._save_failure(step, err)) from None
        self._record_manifests()

    def _save_failure(self, step: int | None, err: BaseException) -> str:
        free = shutil.disk_usage(self.directory).free
        needed = f"; the last complete checkpoint took {self._last_bytes / 1e6:,.1f} MB" if self._last_bytes else ""
        last = self.latest_committed_step()
        reason = os_reason(err)
        return (f"saving checkpoint {'' if step is None else f'step {step} '}into {self.directory} failed: "
                f"{reason + ' -- ' if reason else ''}{one_line(err, 160)}. Free space there now: {free / 1e6:,.1f} MB"
                f"{needed}. The earlier checkpoints are intact (newest: {'none' if last is None else f'step {last}'}); "
                "free some space (or fix the file system) and rerun the same command to resume from it.")

    def _check_free_space(self, step: int) -> None:
        """Refuse to start a save that clearly cannot fit: less free space than the last checkpoint took."""
        if not self._last_bytes:
            return
        free = shutil.disk_usage(self.directory).free
        if free < self._last_bytes:
            last = self.latest_committed_step()
            raise CheckpointSaveFailed(
                f"not saving checkpoint step {step}: {self.directory} has {free / 1e6:,.1f} MB free, the last "
                f"checkpoint took {self._last_bytes / 1e6:,.1f} MB. The earlier checkpoints are intact (newest: "
                f"{'none' if last is None else f'step {last}'}); free some space and rerun the same command to resume.")

    def _record_manifests(self) -> None:
        """Write the manifest of every committed step that has none (process 0; the files of all
        processes are on the shared checkpoint directory) and drop those of deleted steps."""
        committed = set(self.manager.all_steps())
        if jax.process_index() == 0:
            self.manifests.mkdir(exist_ok=True)
            for step in self._unrecorded:
                if step in committed:
                    files = directory_manifest(self.directory / str(step))
                    self._last_bytes = manifest_bytes(files)
                    try:
                        write_json_atomic(self.manifests / f"{step}.json", {"step": step, "files": files})
                    except OSError as err:  # e.g. the disk filled up: the checkpoint is fine, just unverifiable
                        log.warning("Could not record the checksums of checkpoint step %d (%s); it will be restored "
                                    "without verification.", step, one_line(err))
            for stale in self.manifests.glob("*.json"):
                if stale.stem.isdigit() and int(stale.stem) not in committed:
                    stale.unlink(missing_ok=True)
        self._unrecorded.clear()

    def _recorded_bytes(self) -> int | None:
        """Size of the newest checkpoint with a manifest (None: none recorded)."""
        steps = sorted((int(p.stem) for p in self.manifests.glob("*.json") if p.stem.isdigit()), reverse=True)
        for step in steps:
            try:
                return manifest_bytes(json.loads((self.manifests / f"{step}.json").read_text())["files"])
            except (OSError, ValueError, KeyError):
                continue
        return None

    def _damage(self, step: int) -> list[str] | None:
        """What differs between checkpoint `step` and its manifest ([] : intact; None: no manifest)."""
        path = self.manifests / f"{step}.json"
        try:
            files = json.loads(path.read_text())["files"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as err:
            return [f"its manifest {path} is unreadable ({one_line(err)})"]
        problems = verify_manifest(self.directory / str(step), files)
        return [p for p in problems if not p.endswith(": not recorded")]

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
        """(state, progress) of the newest usable checkpoint, with `data_iterator` (if not None) set
        to its position; None for a run that has never saved one. Damaged checkpoints are moved
        aside; see the module docstring for what stops the run instead."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            damage = self._damage(step)
            # A collective: no process moves a damaged checkpoint while another may still be listing or
            # reading it (e.g. orbax's manager reading its metadata), and all stop together.
            if any_process(bool(damage)) and not damage:
                damage = ["found damaged by another process"]
            if damage:
                self._unusable(step, f"its files differ from their checksums: {'; '.join(damage[:3])}"
                                     + (f" (and {len(damage) - 3} more)" if len(damage) > 3 else ""))
                continue
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
            except Exception as err:  # noqa: BLE001 - any failure means this checkpoint could not be used
                if damage == [] or is_transient(err):
                    why = "its files match their checksums" if damage == [] else "the error may be transient"
                    raise CheckpointRestoreFailed(
                        f"restoring checkpoint step {step} failed ({one_line(err)}), but {why}, so it is not "
                        f"treated as damaged and stays in {self.directory}. Fix the cause (I/O, memory, a changed "
                        "model or mesh setting) and rerun the same command.") from err
                self._unusable(step, one_line(err))
                continue
            params = _params_state(abstract_params, restored["params"])
            progress = dict(restored["progress"])
            step_array = jax.device_put(jax.numpy.asarray(progress["step"], jax.numpy.int32), state_shardings.step)
            return TrainState(step=step_array, params=params, opt_state=restored["opt_state"]), progress
        unreadable = self.run_dir / UNREADABLE_DIR
        if unreadable.is_dir() and any(unreadable.iterdir()):
            raise UnreadableCheckpoint(
                f"no checkpoint of {self.run_dir} can be restored: "
                + (f"all {len(steps)} were damaged and " if steps else "every one was damaged and has been ")
                + f"moved to {unreadable}. Not starting over from step 0, which would silently discard the run. "
                "To start over on purpose, delete that directory and the run's checkpoints/ (or use a new output_dir).")
        return None

    def _unusable(self, step: int, reason: str) -> None:
        """Move checkpoint `step` aside; on several processes stop the run there (`UnreadableCheckpoint`:
        the others may be inside a collective restore, so none can go on to an older checkpoint now)."""
        self._set_aside(step, reason)
        if jax.process_count() > 1:
            raise UnreadableCheckpoint(
                f"checkpoint step {step} could not be restored on process {jax.process_index()} ({reason}); it was "
                f"moved to {self.run_dir / UNREADABLE_DIR}. Rerun the same command to resume from the next older "
                "checkpoint.")

    def _set_aside(self, step: int, reason: str) -> None:
        source = self.directory / str(step)
        target = self.run_dir / UNREADABLE_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("Checkpoint step %d cannot be restored (%s); moved to %s.", step, reason, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            source.rename(target)  # atomic: whichever process fails first moves it, the others find it gone
        except FileNotFoundError:
            pass
        if jax.process_index() == 0:
            (self.manifests / f"{step}.json").unlink(missing_ok=True)
        if jax.process_count() == 1:
            self.manager.reload()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def latest_committed_step(self) -> int | None:
        """The newest checkpoint on disk that finished saving (not one being written)."""
        steps = checkpoint_steps(self.run_dir)
        return steps[-1] if steps else None

    def close(self) -> None:
        """Release orbax's threads; a save still running is waited for, and its failure ignored
        here (`finish` is where a run learns of it)."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - already reported, or the run is ending on another error
            log.debug("ignored while closing the checkpointer: %s", one_line(err))
        self.manager.close()


def load_checkpoint_params(checkpoint_dir: str | Path, abstract_params: nnx.State, shardings: nnx.State) -> nnx.State:
    """The parameters saved in one checkpoint directory `<run>/checkpoints/<step>`, restored
    directly into `shardings`."""
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(Path(checkpoint_dir).absolute() / "params",
                                        _params_target(abstract_params, shardings))
    return _params_state(abstract_params, restored)


def load_checkpoint_adapter(checkpoint_dir: str | Path, spec: LoraSpec, cfg: ModelConfig) -> LoraAdapter:
    """The LoRA adapter of `spec` saved in one checkpoint directory of a LoRA run (whose `params`
    item holds only the adapter weights), restored whole onto the first local device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(lambda: adapter_params(init_lora(cfg, spec)))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(Path(checkpoint_dir).absolute() / "params", target)
    return adapter_from_params(spec, restored)


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

