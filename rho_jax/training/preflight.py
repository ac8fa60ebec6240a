"""Everything a training run refuses before it compiles anything: models that do not fit the data
or each other, a batch the mesh cannot split, an unusable output directory; and the run's inputs
(tokenizer, model configs, mesh, data streams) once they passed."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rho_jax import slm
from rho_jax.data import eval_batches, load_tokenizer, positioned_by_step, tokenizer_fingerprint, train_dataset
from rho_jax.data.fingerprint import data_fingerprint
from rho_jax.evaluation.in_training import TrainingTask, training_tasks
from rho_jax.evaluation.tasks import TaskError
from rho_jax.models import ModelConfig
from rho_jax.models.hub import resolve_local_dir
from rho_jax.sharding import BATCH_AXES, batch_sharding, make_mesh
from rho_jax.training.cluster import barrier
from rho_jax.training.config import ConfigError, RunConfig
from rho_jax.training.model_sources import read_model_config, tokenizer_dir
from rho_jax.training.run_dir import check_data_unchanged, check_output_dir

log = logging.getLogger("rho_jax.train")


def check_models(cfg: RunConfig, tokenizer: Any) -> tuple[ModelConfig, ModelConfig | None]:
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
    if cfg.online_reference is not None:
        reference_config = read_model_config(cfg.online_reference, "reference")
        slm.check_reference(cfg.slm, True, model_config.vocab_size, reference_config.vocab_size)
    expected = tokenizer_fingerprint(tokenizer)
    for what, source in (("model", cfg.model), ("reference", cfg.online_reference)):
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


def check_batch(cfg: RunConfig, mesh: Mesh) -> None:
    """Every micro-batch splits evenly over the batch shards and the processes, each process holding its own rows."""
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


@dataclasses.dataclass
class RunInputs:
    """What a run reads, checked: the output directory, tokenizer, architectures, mesh, data."""

    run_dir: Path
    tokenizer: Any
    tokenizer_dir: Path  # local (a Hub id resolved into the HF cache), copied into the run directory
    data_fingerprint: dict  # of the training files (`rho_jax.data.fingerprint`)
    model_config: ModelConfig
    reference_config: ModelConfig | None
    mesh: Mesh
    data_by_step: bool  # the data position is the step (prepared rows), not the iterator's state
    data_from: Callable[[int], Any]  # batch index -> iterator of this process's batches from there
    data_iterator: Any  # data_from(0): opened (every record validated) before anything is written
    eval_sets: dict[str, list[dict[str, np.ndarray]]]
    eval_tasks: list[TrainingTask]  # few-shot tasks (eval.tasks), their samples built


def check_eval_tasks(cfg: RunConfig, mesh: Mesh) -> list[TrainingTask]:
    """The few-shot tasks of `eval.tasks`, every test and exemplar file read and checked."""
    if not cfg.eval.tasks:
        return []
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if cfg.eval.generation_batch_size % shards:
        raise ConfigError(f"eval.generation_batch_size {cfg.eval.generation_batch_size} is not divisible by the {shards} "
                          f"batch shards of the mesh (data x fsdp = {dict(mesh.shape)}).")
    try:
        return training_tasks(cfg.eval)
    except TaskError as err:
        raise ConfigError(f"eval.tasks: {err}") from err


def preflight(cfg: RunConfig) -> RunInputs:
    """Check the output directory, models, tokenizer, mesh and batch layout, and open the data."""
    run_dir = check_output_dir(cfg)
    fingerprint = data_fingerprint(cfg.data)
    check_data_unchanged(run_dir, fingerprint)
    barrier("output-dir-checked")  # before process 0 writes into it
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    model_config, reference_config = check_models(cfg, tokenizer)
    mesh = make_mesh(cfg.mesh)
    check_batch(cfg, mesh)
    process, processes = jax.process_index(), jax.process_count()

    def data_from(start_batch: int) -> Any:
        return iter(train_dataset(cfg.data, tokenizer, batch_rows=cfg.batch_size // processes,
                                  process_index=process, process_count=processes, start_batch=start_batch))

    eval_rows = cfg.eval.batch_size or cfg.batch_size
    eval_sets = {
        name: eval_batches(source, tokenizer, seq_len=cfg.data.seq_len, global_batch_rows=eval_rows,
                           max_rows=cfg.eval.max_rows, process_index=process, process_count=processes,
                           on_bad_record=cfg.data.on_bad_record)
        for name, source in cfg.eval.sets.items()
    }
    eval_tasks = check_eval_tasks(cfg, mesh)
    tokenizer_dir = resolve_local_dir(cfg.data.tokenizer, "data.tokenizer", kind="tokenizer")
    return RunInputs(run_dir=run_dir, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, data_fingerprint=fingerprint,
                     model_config=model_config,
                     reference_config=reference_config, mesh=mesh, data_by_step=positioned_by_step(cfg.data),
                     data_from=data_from, data_iterator=data_from(0), eval_sets=eval_sets,
                     eval_tasks=eval_tasks)
