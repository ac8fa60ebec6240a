"""Models named by a path, as the analysis commands take them, and their per-token losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from rho_jax.checkpoint import CHECKPOINTS_DIR, checkpoint_steps
from rho_jax.config import ModelSource
from rho_jax.model_source import load_model, tokenizer_dir
from rho_jax.models.safetensors_io import INDEX_FILE, SINGLE_FILE
from rho_jax.sharding import make_mesh
from rho_jax.step import model_token_losses


def model_source(path: str | Path) -> ModelSource:
    """A Hugging Face directory (config.json + safetensors) loads as `hf`; anything else (a run, one
    of its checkpoints, a rho_jax model directory) as `checkpoint`."""
    path = Path(path)
    is_hf = (path / "config.json").is_file() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())
    return ModelSource(init="hf" if is_hf else "checkpoint", path=str(path))


def load(path: str | Path) -> tuple[nnx.GraphDef, nnx.State]:
    """(graph definition, parameters) of the model at `path`, on all local devices."""
    graphdef, params = nnx.split(load_model(model_source(path), make_mesh()), nnx.Param)
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


def token_loss_fn(graphdef: nnx.GraphDef, chunk: int | None = 512) -> Callable[[nnx.State, dict], Any]:
    """Jitted `(params, batch) -> loss [B, T]`, the per-token cross-entropy of the model."""
    return jax.jit(lambda params, batch: model_token_losses(graphdef, params, batch, chunk, False)[0])


def valid_token_losses(graphdef: nnx.GraphDef, params: nnx.State, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The losses of every valid target of `batches`, in order (1-D float32)."""
    losses = token_loss_fn(graphdef)
    return np.concatenate([np.asarray(losses(params, b))[b["valid"]] for b in batches])
