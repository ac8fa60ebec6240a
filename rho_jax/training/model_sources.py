"""The trained and reference models of a run, from their `ModelSource`, placed on the mesh.

Sources: `scratch` (random init from a model config file, created directly in its shardings),
`hf` (a local HF directory, or a Hugging Face Hub id `owner/name[@revision]` fetched into the HF
cache by `rho_jax.models.hub`), `checkpoint` (a rho_jax training run -> its newest checkpoint, one
`<run>/checkpoints/<step>` directory, or a rho_jax model directory from `convert to-orbax`).
A LoRA run's checkpoint (`model.lora`: only adapters) loads as its base (the run's own `model`)
with the adapter merged in. `load_adapter` reads a LoRA adapter from any of the places one lives.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rho_jax.data.tokenizer import has_tokenizer_files
from rho_jax.models import Llama, ModelConfig, load_hf, load_orbax, read_hf_config
from rho_jax.models.hub import resolve_local_dir
from rho_jax.models.lora import LoraAdapter, merge_lora
from rho_jax.models.lora_io import LORA_CONFIG, is_lora_dir, load_lora
from rho_jax.models.lora_peft import ADAPTER_CONFIG, load_peft
from rho_jax.models.orbax_io import is_orbax_model_dir
from rho_jax.models.params import abstract_model
from rho_jax.sharding import param_shardings
from rho_jax.training.checkpoint import (
    CHECKPOINTS_DIR,
    latest_checkpoint_dir,
    load_checkpoint_adapter,
    load_checkpoint_params,
)
from rho_jax.training.config import ConfigError, ModelSource
from rho_jax.training.run_dir import (
    TOKENIZER_DIR,
    is_lora_run,
    is_run_dir,
    run_lora_spec,
    run_model_config,
    stored_run_config,
)
from rho_jax.training.schema import build


def _checkpoint_dir(path: Path) -> Path | None:
    """The checkpoint step directory that `path` names (a run -> its newest), or None if it names none."""
    if is_run_dir(path):
        return latest_checkpoint_dir(path)
    if path.parent.name == CHECKPOINTS_DIR and is_run_dir(path.parent.parent) and path.name.isdigit():
        return path
    return None


def _source_dir(source: ModelSource, what: str) -> Path:
    """The local path of `source` (hf or checkpoint): for `hf` a Hub id resolves to its snapshot in
    the HF cache (downloaded once per process), anything else is taken as a local path."""
    if source.init == "hf":
        return resolve_local_dir(source.path, f"{what}.path", kind="model")
    return Path(source.path)


def _check_exists(source: ModelSource, what: str) -> Path:
    path = _source_dir(source, what)
    if not path.is_dir():
        raise ConfigError(f"{what}.path: {path} is not a directory.")
    return path


def read_model_config(source: ModelSource, what: str = "model") -> ModelConfig:
    """The architecture of the model `source` describes (read from its files, nothing loaded)."""
    if source.init == "scratch":
        if not Path(source.config).is_file():
            raise ConfigError(f"{what}.config: model config file {source.config} does not exist.")
        return ModelConfig.from_file(source.config)
    path = _check_exists(source, what)
    if source.init == "hf":
        return read_hf_config(path)
    step_dir = _checkpoint_dir(path)
    if step_dir is not None:
        return run_model_config(step_dir.parent.parent)
    if is_orbax_model_dir(path):
        return ModelConfig.from_file(path / "config.json")
    raise ConfigError(
        f"{what}.path: {path} is neither a rho_jax training run, one of its checkpoints/<step> "
        "directories, nor a rho_jax model directory (convert to-orbax)."
    )


def tokenizer_dir(source: ModelSource, what: str = "model") -> Path | None:
    """The directory holding the tokenizer a loaded model was trained with (None: unknown)."""
    if source.init == "scratch":
        return None
    path = _source_dir(source, what)
    step_dir = _checkpoint_dir(path) if source.init == "checkpoint" else None
    candidate = step_dir.parent.parent / TOKENIZER_DIR if step_dir is not None else path
    return candidate if has_tokenizer_files(candidate) else None


def model_graph(cfg: ModelConfig, source: ModelSource) -> tuple[nnx.GraphDef, nnx.State]:
    """(graph definition, abstract parameter state) of the model; no memory is allocated."""
    graphdef, flat = abstract_model(cfg, source.options)
    return graphdef, nnx.from_flat_state(flat)


def load_model(source: ModelSource, mesh: Mesh, seed: int = 0, what: str = "model") -> Llama:
    """The model `source` describes, as a `Llama` with parameters placed on `mesh` (`what` names
    it in error messages)."""
    cfg = read_model_config(source, what)
    graphdef, abstract = model_graph(cfg, source)
    return nnx.merge(graphdef, load_params(source, cfg, abstract, mesh, seed, what))


def place_loaded(params: nnx.State, shardings: nnx.State) -> nnx.State:
    """Parameters loaded whole into every process, placed in `shardings`. With several processes
    each device takes its slice of the local copy (`jax.device_put` would first check, by gathering
    every array from every process, that all copies are equal)."""
    if jax.process_count() == 1:
        return jax.device_put(params, shardings)

    def place(value: jax.Array, sharding: jax.sharding.Sharding) -> jax.Array:
        local = np.asarray(value)
        return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

    return jax.tree.map(place, params, shardings)


def load_params(source: ModelSource, cfg: ModelConfig, abstract: nnx.State, mesh: Mesh, seed: int,
                what: str = "model") -> nnx.State:
    """The model's parameters (`abstract`: their state from `model_graph`), sharded over `mesh` by
    the logical-axis rules (`what` names the model in error messages)."""
    shardings = param_shardings(abstract, mesh)
    if source.init == "scratch":
        create = lambda: nnx.state(Llama(cfg, source.options, rngs=nnx.Rngs(seed)), nnx.Param)  # noqa: E731
        return jax.jit(create, out_shardings=shardings)()
    path = _source_dir(source, what)
    step_dir = _checkpoint_dir(path) if source.init == "checkpoint" else None
    if step_dir is not None and is_lora_run(step_dir.parent.parent):
        return place_loaded(nnx.state(_merged_lora_run(step_dir, source, mesh, what), nnx.Param), shardings)
    if step_dir is not None:
        return load_checkpoint_params(step_dir, abstract, shardings)
    opts = source.options
    model = load_hf(path, options=opts) if source.init == "hf" else load_orbax(path, options=opts)
    return place_loaded(nnx.state(model, nnx.Param), shardings)


def _merged_lora_run(step_dir: Path, source: ModelSource, mesh: Mesh, what: str) -> Llama:
    """The base model of the LoRA run owning `step_dir` (its `model`, computing with `source.options`)
    with the adapter of that checkpoint merged in."""
    run = step_dir.parent.parent
    stored = stored_run_config(run)
    base = build(ModelSource, {**stored["model"], "options": source.options, "lora": None}, f"{run}/config.yaml: model")
    seed = int(stored["train"].get("seed", 0))
    return merge_lora(load_model(base, mesh, seed, f"{what} (the base of LoRA run {run})"), run_adapter(step_dir))


def run_adapter(path: str | Path) -> LoraAdapter:
    """The adapter of a LoRA training run (its newest checkpoint) or of one of its checkpoints."""
    step_dir = _checkpoint_dir(Path(path))
    if step_dir is None or not is_lora_run(step_dir.parent.parent):
        raise ValueError(f"{path} is not a LoRA training run (model.lora) nor one of its checkpoints/<step> directories.")
    run = step_dir.parent.parent
    return load_checkpoint_adapter(step_dir, run_lora_spec(run), run_model_config(run))


def load_adapter(path: str | Path, cfg: ModelConfig) -> LoraAdapter:
    """A LoRA adapter for a model of config `cfg`, checked against it: a rho_jax adapter directory, a
    LoRA training run (newest checkpoint) or one of its checkpoints, or a PEFT adapter directory.
    `FileNotFoundError` when `path` is none of these, `ValueError` when the adapter does not fit `cfg`."""
    path = Path(path)
    if is_lora_dir(path):
        adapter = load_lora(path)
    elif _checkpoint_dir(path) is not None:
        adapter = run_adapter(path)
    elif (path / ADAPTER_CONFIG).is_file():
        adapter = load_peft(path, cfg)
    else:
        raise FileNotFoundError(f"{path} is not a LoRA adapter: neither a PEFT adapter directory ({ADAPTER_CONFIG}), "
                                f"a rho_jax adapter directory ({LORA_CONFIG}), nor a LoRA training run.")
    adapter.check_compatible(cfg)
    return adapter
