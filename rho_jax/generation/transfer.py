"""Host <-> device transfers of the generation loop that also work when the mesh spans several processes.

Every process runs the same host loop on the same prompts, so host values are equal everywhere:
`place` builds a global array from the local copy (each device takes its slice), `fetch` brings
global arrays back whole to every process (an all-gather when some shards live elsewhere).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rho_jax.sharding import param_shardings

REPLICATED = PartitionSpec()


def place(mesh: Mesh, value: Any, spec: PartitionSpec = REPLICATED) -> jax.Array:
    """The host value `value` (equal on every process) as a global array laid out by `spec` (default: replicated)."""
    local = np.asarray(value)
    return jax.make_array_from_callback(local.shape, NamedSharding(mesh, spec), lambda index: local[index])


def fetch(tree: Any) -> Any:
    """NumPy copies of the global arrays in `tree`, whole, on every process."""
    if all(leaf.is_fully_addressable for leaf in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def place_params(params: nnx.State, mesh: Mesh) -> nnx.State:
    """Model parameters laid out on `mesh` by the logical-axis rules: global arrays (e.g. a training
    state's) are resharded, process-local ones placed from their local copy."""
    shardings = param_shardings(params, mesh)

    def put(value: jax.Array, sharding: jax.sharding.Sharding) -> jax.Array:
        if jax.process_count() == 1 or not value.is_fully_addressable:
            return jax.device_put(value, sharding)
        local = np.asarray(value)
        return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

    return jax.tree.map(put, params, shardings)
