"""Models named by a path, as the analysis commands take them, and their per-token losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rho_jax.models.safetensors_io import INDEX_FILE, SINGLE_FILE
from rho_jax.slm import token_losses_on_mesh
from rho_jax.training.checkpoint import CHECKPOINTS_DIR, checkpoint_steps
from rho_jax.training.config import ModelSource
from rho_jax.training.model_sources import load_model, tokenizer_dir


def model_source(path: str | Path) -> ModelSource:
    """A Hugging Face directory (config.json + safetensors) loads as `hf`; anything else (a run, one
    of its checkpoints, a rho_jax model directory) as `checkpoint`."""
    path = Path(path)
    is_hf = (path / "config.json").is_file() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())
    return ModelSource(init="hf" if is_hf else "checkpoint", path=str(path))


def load(path: str | Path, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """(graph definition, parameters) of the model at `path`, placed on `mesh`."""
    graphdef, params = nnx.split(load_model(model_source(path), mesh), nnx.Param)
    return graphdef, params


def run_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint of a training run, oldest first."""
    steps = checkpoint_steps(run)
    if not steps:
        raise FileNotFoundError(f"{run} has no checkpoints under {CHECKPOINTS_DIR}/.")
    return [(step, Path(run) / CHECKPOINTS_DIR / str(step)) for step in steps]


def model_tokenizer(path: str | Path) -> str:
    """The tokenizer directory saved with the model at `path`; a clear error if there is none."""
    directory = tokenizer_dir(model_source(path))
    if directory is None:
        raise FileNotFoundError(f"{path} carries no tokenizer files; pass --tokenizer.")
    return str(directory)


def valid_token_losses(graphdef: nnx.GraphDef, params: nnx.State, batches: list[dict[str, np.ndarray]], mesh: Mesh,
                       chunk: int | None = 512) -> np.ndarray:
    """The losses of every valid target of `batches`, in order (1-D float32)."""
    losses = token_losses_on_mesh(graphdef, mesh, chunk_size=chunk)
    return np.concatenate([np.asarray(losses(params, b)[0])[b["valid"]] for b in batches])
