"""A training run's output directory: what is in it, and the checks before a run may use it.

    .rho_jax_run        marker: this directory was created by `python -m rho_jax.train`
    config.yaml         the resolved run configuration
    model_config.json   the trained model's architecture (HF config fields)
    tokenizer/          the tokenizer the run was trained with
    checkpoints/<step>/ orbax checkpoints (`rho_jax.training.checkpoint`)
    metrics.jsonl       one JSON object per training step
    eval.jsonl          one JSON object per (evaluation, held-out set)
    tensorboard/        TensorBoard event files
    wandb/, wandb_id    Weights & Biases files and run id (only with logging.wandb)
    done.json           written when the run has reached its last step
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import yaml

from rho_jax.models import ModelConfig
from rho_jax.models.atomic_dir import copy_tokenizer_files
from rho_jax.training.config import ConfigError, RunConfig, config_differences
from rho_jax.training.schema import to_data

RUN_MARKER = ".rho_jax_run"
CONFIG_FILE = "config.yaml"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
TENSORBOARD_DIR = "tensorboard"
DONE_FILE = "done.json"
WRITE_PROBE = ".write-test-"

# Settings that may change between a run and its resumption (they do not change what is trained;
# output_dir may differ when a run directory was moved).
RESUMABLE_CHANGES = ("output_dir", "logging.", "checkpoint.keep_last", "checkpoint.keep_every", "checkpoint.async_save",
                     "eval.")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a run's JSON-lines file (metrics.jsonl, eval.jsonl), blank lines skipped."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def check_output_dir(cfg: RunConfig) -> Path:
    """The run directory, after making sure it can be written and does not belong to another run.

    A new or empty directory is fine; an existing rho_jax run is resumed only if its configuration
    differs in nothing but `RESUMABLE_CHANGES`; any other non-empty directory is refused.
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
        old = yaml.safe_load((path / CONFIG_FILE).read_text())
        changed = [d for d in config_differences(old, to_data(cfg)) if not d.startswith(RESUMABLE_CHANGES)]
        if changed:
            raise ConfigError(
                f"output_dir {path} holds a run with a different configuration; resuming it would mix two runs.\n  "
                + "\n  ".join(changed)
                + "\nUse a new output_dir, or restore the original values to resume."
            )
    elif any(not p.name.startswith(WRITE_PROBE) for p in path.iterdir()):  # other processes' probes may be there
        raise ConfigError(f"output_dir {path} is a non-empty directory that is not a rho_jax run; choose a new one.")
    return path


def initialize_run_dir(path: Path, cfg: RunConfig, model_config: ModelConfig, tokenizer_dir: str | Path) -> None:
    """Write (or refresh) the resolved config, model config, tokenizer and marker (process 0 only)."""
    (path / CONFIG_FILE).write_text(cfg.to_yaml())
    (path / MODEL_CONFIG_FILE).write_text(json.dumps(model_config.to_hf_dict(), indent=2))
    (path / TOKENIZER_DIR).mkdir(exist_ok=True)
    copy_tokenizer_files(tokenizer_dir, path / TOKENIZER_DIR)
    (path / RUN_MARKER).write_text("created by python -m rho_jax.train\n")


def run_model_config(run: str | Path) -> ModelConfig:
    return ModelConfig.from_file(Path(run) / MODEL_CONFIG_FILE)
