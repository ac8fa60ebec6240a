"""The model of a LoRA training run (`model.lora`): frozen base + trained adapters.

The run's model is `with_lora(base, adapter)`. Its state splits with `ADAPTER_PARAMS` into the
adapter weights (the train state's `params`: gradients, optimizer state and checkpoints cover only
them) and the frozen rest (`TrainState.frozen`: the base weights, stored in
`model.options.param_dtype`, and the fixed per-layer scales), which is loaded from `model` at every
start of the run and never saved. Adapters are float32 and sharded like their base kernel's input
(`lora_a`) and output (`lora_b`) axes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from rho_jax.models import Llama, ModelConfig
from rho_jax.models.lora import ADAPTER_PARAMS, LoraAdapter, LoraSpec, init_lora, with_lora
from rho_jax.sharding import param_shardings
from rho_jax.training.checkpoint import checkpoint_steps
from rho_jax.training.config import ConfigError, ModelSource
from rho_jax.training.model_sources import load_adapter, load_params, model_graph
from rho_jax.training.run_dir import LORA_SPEC_FILE, is_lora_run, run_lora_spec


def initial_adapter(source: ModelSource, cfg: ModelConfig, seed: int) -> LoraAdapter:
    """The float32 adapter a run of `source` (with `source.lora`) starts from, for a base of config `cfg`:
    `lora.init` read and checked against `cfg` (its dropout replaced by `lora.dropout` if set), else
    a new one initialized as PEFT does (`init_lora`) from `seed`. A `ConfigError` names the field."""
    lora = source.lora
    if lora.init is None:
        spec = LoraSpec.uniform(cfg, lora.resolved("r"), lora.resolved("alpha"), list(lora.resolved("target_modules")),
                                lora.resolved("rslora"), lora.resolved("dropout"))
        return init_lora(cfg, spec, seed)
    try:
        adapter = load_adapter(lora.init, cfg)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"model.lora.init: {err}") from err
    weights = {name: {k: jnp.asarray(v, jnp.float32) for k, v in pair.items()} for name, pair in adapter.weights.items()}
    spec = adapter.spec if lora.dropout is None else dataclasses.replace(adapter.spec, dropout=lora.dropout)
    return LoraAdapter(spec, weights)


def check_same_adapter(run_dir: Path, spec: LoraSpec) -> None:
    """Refuse to resume a LoRA run whose checkpoints were trained with another adapter spec than
    `spec` (e.g. `model.lora.init` now names a changed adapter)."""
    if checkpoint_steps(run_dir) and is_lora_run(run_dir) and run_lora_spec(run_dir) != spec:
        raise ConfigError(f"output_dir {run_dir}: its checkpoints hold another adapter than model.lora now "
                          f"describes ({LORA_SPEC_FILE} differs: the adapter at model.lora.init changed?); resuming would "
                          "mix two adapters. Restore that adapter, or use a new output_dir.")


def lora_model_graph(cfg: ModelConfig, source: ModelSource, spec: LoraSpec) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graph definition, abstract adapter state, abstract frozen state) of the base `cfg` with
    adapters of `spec`; no memory is allocated."""
    model = nnx.eval_shape(lambda: with_lora(Llama(cfg, source.options, rngs=nnx.Rngs(0)), init_lora(cfg, spec)))
    graphdef, state = nnx.split(model)
    adapter, frozen = nnx.split_state(state, ADAPTER_PARAMS, ...)
    return graphdef, adapter, frozen


def load_lora_state(source: ModelSource, cfg: ModelConfig, adapter: LoraAdapter, mesh: Mesh,
                    seed: int) -> tuple[nnx.State, nnx.State]:
    """(adapter state, frozen state) of the base `source` carrying `adapter`, placed on `mesh`."""
    graphdef, abstract = model_graph(cfg, source)
    base = nnx.merge(graphdef, load_params(source, cfg, abstract, mesh, seed))
    trainable, frozen = nnx.split_state(nnx.state(with_lora(base, adapter)), ADAPTER_PARAMS, ...)
    return (jax.device_put(trainable, param_shardings(trainable, mesh)),
            jax.device_put(frozen, param_shardings(frozen, mesh)))
