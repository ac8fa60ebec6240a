"""A training run's output directory: what is in it, and the checks before a run may use it.

    .rho_jax_run        marker: this directory was created by `python -m rho_jax.train`
    config.yaml         the resolved run configuration
    model_config.json   the trained model's architecture (HF config fields)
    tokenizer/          the tokenizer the run was trained with
    lora_spec.json      LoRA runs only: the adapter's projections, per-layer ranks/alphas, rslora and
                        dropout (a `LoraSpec`, as in a rho_jax adapter's lora_config.json); the
                        checkpoints hold only the adapter weights
    checkpoints/<step>/ orbax checkpoints (`rho_jax.training.checkpoint`)
    metrics.jsonl       one JSON object per training step
    eval.jsonl          one JSON object per (evaluation, held-out set)
    tensorboard/        TensorBoard event files
    data_fingerprint.json  the training files' sizes and hashes when the run began (`rho_jax.data.fingerprint`)
    checkpoint_manifests/  size and sha256 of every checkpoint file (`rho_jax.training.checkpoint`)
    .lock               held by the running trainer (`rho_jax.training.run_lock`)
    wandb/, wandb_id    Weights & Biases files and run id (only with logging.wandb)
    done.json           written when the run has reached its last step
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import yaml

from rho_jax.data.fingerprint import fingerprint_changes
from rho_jax.integrity import write_json_atomic, write_text_atomic
from rho_jax.models import ModelConfig
from rho_jax.models.atomic_dir import copy_tokenizer_files
from rho_jax.models.lora import LoraSpec
from rho_jax.models.lora_io import lora_config_json, read_lora_config
from rho_jax.training.checkpoint import checkpoint_steps
from rho_jax.training.config import ConfigError, RunConfig, config_differences
from rho_jax.training.run_lock import LOCK_FILE
from rho_jax.training.schema import to_data

log = logging.getLogger(__name__)

RUN_MARKER = ".rho_jax_run"
CONFIG_FILE = "config.yaml"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
TENSORBOARD_DIR = "tensorboard"
DONE_FILE = "done.json"
DATA_FINGERPRINT_FILE = "data_fingerprint.json"
LORA_SPEC_FILE = "lora_spec.json"
WRITE_PROBE = ".write-test-"

# Settings that may change between a run and its resumption (they do not change what is trained;
# output_dir may differ when a run directory was moved).
RESUMABLE_CHANGES = ("output_dir", "logging.", "checkpoint.keep_last", "checkpoint.keep_every", "checkpoint.async_save",
                     "eval.")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a run's JSON-lines file (metrics.jsonl, eval.jsonl), blank lines skipped.

    A last line that is not complete JSON (a write cut short by a kill) is left out with a warning;
    an invalid line anywhere else raises ValueError naming `file:line`.
    """
    lines = [(n, line) for n, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if position == len(lines) - 1:
                log.warning("%s:%d: the last line is cut short (a write interrupted by a kill); it is left out.",
                            path, number)
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({err}); the file was damaged.") from err
    return records


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def check_output_dir(cfg: RunConfig) -> Path:
    """The run directory, after making sure it can be written and does not belong to another run.

    A new or empty directory is fine; an existing rho_jax run with checkpoints is resumed only if its
    configuration differs in nothing but `RESUMABLE_CHANGES` (one without checkpoints has trained
    nothing that a new configuration could mix with, e.g. one that stopped at a bad record, and takes
    the new one); any other non-empty directory is refused.
    """
    path = Path(cfg.output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir {path} exists and is not a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{WRITE_PROBE}{socket.gethostname()}-{os.getpid()}"  # unique across hosts sharing it
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output_dir {path} is not writable: {err.strerror or err}.") from err
    if is_run_dir(path):
        if not checkpoint_steps(path):
            return path
        changed = [d for d in config_differences(_stored_config(path), to_data(cfg))
                   if not d.startswith(RESUMABLE_CHANGES)]
        if changed:
            raise ConfigError(
                f"output_dir {path} holds a run with a different configuration; resuming it would mix two runs.\n  "
                + "\n  ".join(changed)
                + "\nUse a new output_dir, or restore the original values to resume."
            )
    elif any(not p.name.startswith(WRITE_PROBE) and p.name != LOCK_FILE for p in path.iterdir()):  # probes, our lock
        raise ConfigError(f"output_dir {path} is a non-empty directory that is not a rho_jax run; choose a new one.")
    return path


def _stored_config(path: Path) -> dict:
    """The configuration a run directory was trained with; a clear error if config.yaml is damaged."""
    config = path / CONFIG_FILE
    try:
        stored = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as err:
        stored = err
    if not isinstance(stored, dict):
        raise ConfigError(
            f"output_dir {path}: its {CONFIG_FILE} is {'empty' if stored is None else 'damaged'} "
            f"({stored if isinstance(stored, Exception) else type(stored).__name__}), so this run cannot be checked "
            f"against the configuration its checkpoints were trained with. Restore the file, or delete it to resume "
            "with the configuration given now."
        )
    return stored


def check_data_unchanged(path: Path, fingerprint: dict) -> None:
    """Refuse to resume a run whose training files changed since it began (listing the changes)."""
    stored = path / DATA_FINGERPRINT_FILE
    if not (checkpoint_steps(path) and stored.is_file()):
        return
    changes = fingerprint_changes(json.loads(stored.read_text()), fingerprint)
    if changes:
        raise ConfigError(
            f"output_dir {path}: the training data changed since this run began, so resuming it would continue "
            "on other data than its checkpoints were trained on:\n  " + "\n  ".join(changes)
            + "\nRestore the original files, or start a new run (a new output_dir)."
        )


def initialize_run_dir(path: Path, cfg: RunConfig, model_config: ModelConfig, tokenizer_dir: str | Path,
                       data_fingerprint: dict, lora_spec: LoraSpec | None = None) -> None:
    """Write (or refresh) the resolved config, model config, LoRA spec (LoRA runs), tokenizer and
    marker, and, unless the run already has checkpoints, the data fingerprint (process 0 only).
    Every file is replaced atomically, so a kill never leaves one half-written."""
    write_text_atomic(path / CONFIG_FILE, cfg.to_yaml())
    write_text_atomic(path / MODEL_CONFIG_FILE, json.dumps(model_config.to_hf_dict(), indent=2))
    if lora_spec is not None:
        write_text_atomic(path / LORA_SPEC_FILE, lora_config_json(lora_spec))
    if not (checkpoint_steps(path) and (path / DATA_FINGERPRINT_FILE).is_file()):
        write_json_atomic(path / DATA_FINGERPRINT_FILE, data_fingerprint)
    (path / TOKENIZER_DIR).mkdir(exist_ok=True)
    copy_tokenizer_files(tokenizer_dir, path / TOKENIZER_DIR)
    write_text_atomic(path / RUN_MARKER, "created by python -m rho_jax.train\n")


def run_model_config(run: str | Path) -> ModelConfig:
    return ModelConfig.from_file(Path(run) / MODEL_CONFIG_FILE)


def is_lora_run(run: str | Path) -> bool:
    """Whether `run` is a training run of LoRA adapters (its checkpoints hold only the adapters)."""
    return is_run_dir(run) and (Path(run) / LORA_SPEC_FILE).is_file()


def run_lora_spec(run: str | Path) -> LoraSpec:
    """The adapter spec of a LoRA run (`lora_spec.json`)."""
    return read_lora_config(Path(run) / LORA_SPEC_FILE)


def stored_run_config(run: str | Path) -> dict:
    """The configuration `run` was trained with, as plain data (its config.yaml)."""
    return _stored_config(Path(run))
