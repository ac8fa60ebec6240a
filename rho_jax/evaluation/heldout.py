"""Held-out loss: mean cross-entropy over the valid targets of a fixed set of batches."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rho_jax.data import to_global_batch
from rho_jax.sharding import batch_sharding
from rho_jax.slm import token_losses_on_mesh


def _valid_sums(loss: jax.Array, _entropy: None, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(sum of the loss over valid targets, number of valid targets)."""
    return jnp.sum(jnp.where(batch["valid"], loss, 0.0)), jnp.sum(batch["valid"].astype(jnp.float32))


def build_eval_step(graphdef: nnx.GraphDef, mesh: Mesh, chunk: int | None) -> Callable:
    """Jitted `(params, batch) -> (sum of loss over valid targets, number of valid targets)`."""
    return token_losses_on_mesh(graphdef, mesh, chunk_size=chunk, reduce=_valid_sums)


def evaluate(eval_step: Callable, params: nnx.State, batches: list[dict[str, np.ndarray]], mesh: Mesh) -> dict[str, float]:
    """{"loss": mean loss over every valid target of `batches`, "num_tokens": how many there were}."""
    total = count = 0.0
    for local in batches:
        loss_sum, n = eval_step(params, to_global_batch(local, batch_sharding(mesh)))
        total += float(loss_sum)
        count += float(n)
    return {"loss": total / max(count, 1.0), "num_tokens": int(count)}
