"""Build models without materializing random weights, then fill them from stored arrays."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from rho_jax.models.config import ModelConfig
from rho_jax.models.llama import Llama, ModelOptions

ParamPath = tuple[str, ...]


def abstract_model(cfg: ModelConfig, opts: ModelOptions) -> tuple[nnx.GraphDef, dict[ParamPath, nnx.Variable]]:
    """Graph definition and flat `{path: Variable(ShapeDtypeStruct)}` of the model; no memory is allocated."""
    model = nnx.eval_shape(lambda: Llama(cfg, opts, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    return graphdef, dict(nnx.to_flat_state(state))


def model_from_arrays(
    cfg: ModelConfig,
    opts: ModelOptions,
    load: Callable[[ParamPath, jax.ShapeDtypeStruct], jax.Array],
) -> Llama:
    """Create a model whose every parameter is `load(path, expected_shape_and_dtype)`.

    Parameters are requested one at a time so a loader can stream them from disk; the returned
    array must have exactly the expected shape.
    """
    graphdef, abstract = abstract_model(cfg, opts)
    values = {}
    for path, variable in abstract.items():
        expected = variable.get_value()
        array = load(path, expected)
        if tuple(array.shape) != tuple(expected.shape):
            raise ValueError(f"Parameter {'/'.join(path)} has shape {tuple(array.shape)}, expected {expected.shape}.")
        values[path] = array
    state = nnx.from_flat_state({path: abstract[path].replace(value) for path, value in values.items()})
    return nnx.merge(graphdef, state)
