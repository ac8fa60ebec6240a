"""Named rematerialization (activation checkpointing) policies for one decoder layer."""

from __future__ import annotations

from collections.abc import Callable

import jax

# name -> policy for `jax.checkpoint`; "none" means the layer is not rematerialized at all.
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    # Save nothing: recompute the whole layer in the backward pass (least memory, ~1/3 more FLOPs).
    "full": jax.checkpoint_policies.nothing_saveable,
    # Save every matmul output, recompute elementwise ops (norms, activations, rotary).
    "dots": jax.checkpoint_policies.dots_saveable,
    # Save only weight matmuls (no batch dims), recompute attention score/value products.
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_layer(layer_fn: Callable, policy_name: str, *, prevent_cse: bool) -> Callable:
    """Wrap `layer_fn` in `jax.checkpoint` with the named policy (identity for "none").

    `prevent_cse` should be False inside `lax.scan` (scan already prevents the CSE that would undo
    remat) and True in an unrolled loop.
    """
    if policy_name == "none":
        return layer_fn
    return jax.checkpoint(layer_fn, policy=REMAT_POLICIES[policy_name], prevent_cse=prevent_cse)
