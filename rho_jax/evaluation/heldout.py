"""Held-out evaluation during training: mean cross-entropy over the valid targets of a fixed set."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rho_jax.batch import BATCH_KEYS
from rho_jax.data import to_global_batch
from rho_jax.sharding import batch_sharding, replicated
from rho_jax.step import model_token_losses


def build_eval_step(graphdef: nnx.GraphDef, params_shardings: Any, mesh: Mesh, chunk: int | None) -> Callable:
    """Jitted `(params, batch) -> (sum of loss over valid targets, number of valid targets)`."""

    def sums(params: nnx.State, batch: dict) -> tuple[jax.Array, jax.Array]:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            loss, _ = model_token_losses(graphdef, params, batch, chunk, False)
        return jnp.sum(jnp.where(batch["valid"], loss, 0.0)), jnp.sum(batch["valid"].astype(jnp.float32))

    return jax.jit(sums, in_shardings=(params_shardings, {k: batch_sharding(mesh) for k in BATCH_KEYS}),
                   out_shardings=replicated(mesh))


def evaluate(eval_step: Callable, params: nnx.State, batches: list[dict[str, np.ndarray]], mesh: Mesh) -> dict[str, float]:
    """{"loss": mean loss over every valid target of `batches`, "num_tokens": how many there were}."""
    total = count = 0.0
    for local in batches:
        loss_sum, n = eval_step(params, to_global_batch(local, batch_sharding(mesh)))
        total += float(loss_sum)
        count += float(n)
    return {"loss": total / max(count, 1.0), "num_tokens": int(count)}
