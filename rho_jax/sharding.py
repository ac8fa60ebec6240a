"""Device mesh (`data`, `fsdp`, `tensor`) and the one table that maps logical axes to mesh axes.

- `data`: pure data parallelism (parameters replicated).
- `fsdp`: data parallelism with parameters and optimizer state sharded (ZeRO-3 style) along `embed`.
- `tensor`: Megatron-style model parallelism (attention heads, MLP hidden units, vocabulary).
The batch is sharded over (`data`, `fsdp`). A logical axis whose size the mesh axis does not
divide (e.g. 2 KV heads on 4-way `tensor`) stays replicated instead of failing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (None = replicated). The single place that decides parameter layout.
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "norm": None,
    "layers": None,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; one of them may be -1 to take all remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self) -> None:
        sizes = [self.data, self.fsdp, self.tensor]
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ValueError(f"mesh.{name} must be a positive integer or -1, got {size}.")
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices.")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, but {num_devices} are available."
            )
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: every device of every process) with Auto axis types.

    Auto (not Explicit) axes let XLA insert the collectives that global top-k and the loss need.
    """
    devices = list(devices) if devices is not None else jax.devices()
    shape = config.shape(len(devices))
    device_grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def constrain_batch_axis(x: jax.Array, axis: int = 0) -> jax.Array:
    """Pin axis `axis` of an activation to (`data`, `fsdp`) when tracing under a rho_jax mesh
    (`jax.set_mesh`); a no-op otherwise. Keeps XLA from replicating the batch across fsdp devices."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    spec = [None] * x.ndim
    spec[axis] = BATCH_AXES
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes, following LOGICAL_AXIS_RULES.

    A mesh axis is used at most once per array, and only where it divides the dimension.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match an array of rank {len(shape)}.")
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape):
        if name is not None and name not in LOGICAL_AXIS_RULES:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(LOGICAL_AXIS_RULES)}.")
        mesh_axis = LOGICAL_AXIS_RULES.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
            spec.append(None)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
    return PartitionSpec(*spec)


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """NamedSharding for every `nnx.Variable` in `params` (an nnx State), from its logical axes."""

    def sharding(variable: nnx.Variable) -> nnx.Variable:
        value = variable.get_value()
        axes = variable.get_metadata().get("out_sharding") or (None,) * value.ndim
        return variable.replace(NamedSharding(mesh, logical_to_spec(axes, value.shape, mesh)))

    return jax.tree.map(sharding, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of `[batch, seq]` arrays: batch over (`data`, `fsdp`), sequence replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
