"""rho_jax's native model checkpoint: config.json + orbax-saved parameters (+ tokenizer files).

Layout of a model directory:
    config.json   the HF-style `ModelConfig` fields, plus `"rho_jax_format": 1`
    params/       orbax `StandardCheckpointer` tree `{param_path: array}` (layers stacked on axis 0)
    tokenizer.*   copied from the source model, if any
Restoring keeps the stored parameter dtype unless another `param_dtype` is requested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from rho_jax.models.atomic_dir import atomic_directory, copy_tokenizer_files
from rho_jax.models.config import CONFIG_FILE, ModelConfig
from rho_jax.models.llama import Llama, ModelOptions, resolve_options
from rho_jax.models.params import abstract_model

PARAMS_DIR = "params"
FORMAT_VERSION = 1


def save_orbax(model: Llama, path: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """Save `model` as a rho_jax model directory (written in a staging folder, published when complete)."""
    path = Path(path)
    with atomic_directory(path) as staging:
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging.absolute() / PARAMS_DIR, params)
            checkpointer.wait_until_finished()
        config = model.config.to_hf_dict(dtype=jnp.dtype(model.options.param_dtype).name)
        config["rho_jax_format"] = FORMAT_VERSION
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        if tokenizer_from is not None:
            copy_tokenizer_files(tokenizer_from, staging)
    return path


def is_orbax_model_dir(path: str | Path) -> bool:
    """True if `path` looks like a directory written by `save_orbax`."""
    path = Path(path)
    return (path / CONFIG_FILE).exists() and (path / PARAMS_DIR).is_dir()


def load_orbax(
    path: str | Path,
    dtype: Any = None,
    param_dtype: Any = None,
    options: ModelOptions | None = None,
) -> Llama:
    """Load a model directory written by `save_orbax` (arguments as in `load_hf`).

    Parameters keep the dtype they were saved in unless `param_dtype` (or `options`) says otherwise.
    """
    path = Path(path)
    if not is_orbax_model_dir(path):
        raise FileNotFoundError(
            f"{path} is not a rho_jax model directory (expected {CONFIG_FILE} and {PARAMS_DIR}/ from save_orbax)."
        )
    config = json.loads((path / CONFIG_FILE).read_text())
    version = config.pop("rho_jax_format", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: rho_jax_format {version!r} is not supported (expected {FORMAT_VERSION}).")
    stored_dtype = config.pop("dtype", "float32")
    cfg = ModelConfig.from_hf_dict(config)
    if param_dtype is None and options is None:
        param_dtype = stored_dtype
    opts = resolve_options(options, dtype, param_dtype)
    graphdef, abstract = abstract_model(cfg, opts)
    abstract_state = nnx.from_flat_state(abstract)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract_state)
    )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(path.absolute() / PARAMS_DIR, target)
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state)
