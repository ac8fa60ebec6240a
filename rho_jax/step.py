"""The SLM train step: one jitted, sharded `(state, batch, ref_params) -> (state, metrics)`.

Inside the step, for a global batch split into `accumulation_steps` micro-batches:
1. reference forward (no gradient, no stored activations): L_ref and, if the score needs it, H_ref;
   with a precomputed reference they are read from the batch (`ref_loss`, `ref_entropy`) instead;
2. forward of the trained model: per-token L_theta, chunked so no full `[B, T, V]` fp32 logits exist;
3. scores and selection (`rho_jax.slm`), over the scope chosen in `slm.SLMConfig.scope`:
   - `global` (default, the paper's meaning): top k of the whole global batch, across every
     device, host and micro-batch. With accumulation and the `excess` score this needs L_theta of
     every micro-batch before any gradient, so the step runs one extra no-grad forward pass;
   - `microbatch`: top k within each micro-batch (no extra pass);
   - `sequence`: top k within each row;
4. gradient of sum(selected * L_theta), accumulated over micro-batches and divided by the total
   number of selected tokens, i.e. the gradient of the SLM loss (eq. 4) of the global batch;
5. optax update (clipping, AdamW).
With no reference model the ratio must be 1.0 and the step is plain CLM: no reference forward,
loss = mean cross-entropy over valid targets.

A batch is a dict of `[B, T]` arrays: `input_ids`, `targets` (next tokens), `valid` (bool: false
for padding, cross-document targets and masked prompt tokens), optional `segment_ids`, `positions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from rho_jax import slm
from rho_jax.models import Llama
from rho_jax.models.lora import set_lora_dropout
from rho_jax.sharding import batch_sharding, constrain_batch_axis, param_shardings, replicated


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """step; `params`: the trained parameters (all of the model's, or only its LoRA adapters);
    `opt_state`: the optimizer state of `params`; `frozen`: the rest of the model's state when only
    part of it is trained (LoRA: the base weights and scales), an input of the step that is never
    differentiated, updated or checkpointed (None: the whole model is trained)."""

    step: jax.Array
    params: nnx.State
    opt_state: Any
    frozen: nnx.State | None = None

    @property
    def model_params(self) -> nnx.State:
        """The model's whole state (`params` with `frozen`), what `nnx.merge(graphdef, ...)` takes."""
        return model_state(self.params, self.frozen)


def model_state(params: nnx.State, frozen: nnx.State | None) -> nnx.State:
    """The model's whole state from its trained `params` and its `frozen` rest (None: `params` is all of it)."""
    return params if frozen is None else nnx.merge_state(params, frozen)


def split_micro_batches(batch: dict, steps: int) -> dict:
    """`[B, ...]` -> `[steps, B // steps, ...]` with micro-batch i = rows i, i + steps, i + 2*steps...

    Strided, so every micro-batch spans all batch shards (each device keeps B / steps / n_shards
    rows per micro-batch instead of some devices holding whole micro-batches).
    """

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % steps:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by accumulation_steps={steps}.")
        micro = x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1)
        return constrain_batch_axis(micro, axis=1)

    return {k: split(v) for k, v in batch.items()}


def merge_micro_batches(x: jax.Array) -> jax.Array:
    """Inverse of `split_micro_batches` for one array: back to the global batch's row order."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def select_in_scope(cfg: slm.SLMConfig, valid: jax.Array, loss: jax.Array | None, ref_loss: jax.Array | None,
                    ref_entropy: jax.Array | None) -> jax.Array:
    """The selection mask of `cfg.score` at `cfg.ratio` over all positions given (`global` and
    `microbatch` scopes: the caller passes the positions that compete), or row by row (`sequence`).
    At ratio 1.0 every valid position is kept."""
    if cfg.selects_all:
        return valid

    def pick(valid_, loss_, ref_loss_, ref_entropy_):
        return slm.select_by_score(cfg.score, cfg.ratio, valid_, loss=loss_, ref_loss=ref_loss_, ref_entropy=ref_entropy_)

    if cfg.scope == "sequence":
        def row(*xs):
            return pick(*(None if x is None else x[None] for x in xs))[0]

        return jax.vmap(row)(valid, loss, ref_loss, ref_entropy)
    return pick(valid, loss, ref_loss, ref_entropy)


def accumulate(objective: Callable, params: nnx.State, micro: Any, sums_shape: Any) -> tuple[nnx.State, Any]:
    """Sum of `grad objective(params, m)` and of its auxiliary sums over the micro-batches `m` of
    `micro` (leading axis), one micro-batch at a time (`lax.scan`): memory of one micro-batch.
    `objective(params, m) -> (value, sums)`; `sums_shape` is the abstract shape of `sums`."""

    def one(carry, m):
        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params, m)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    init = jax.tree.map(jnp.zeros_like, (params, sums_shape))
    (grads, sums), _ = jax.lax.scan(one, init, micro)
    return grads, sums


def build_train_step(
    model_graphdef: nnx.GraphDef,
    ref_graphdef: nnx.GraphDef | None,
    cfg: slm.SLMConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    accumulation_steps: int = 1,
    precomputed_reference: bool = False,
    dropout_seed: int | None = None,
) -> Callable[[TrainState, dict, nnx.State | None], tuple[TrainState, dict]]:
    """The pure step function (not jitted; see `jit_train_step`). With `precomputed_reference` (and
    no `ref_graphdef`) the reference's per-token loss and entropy come with the batch.

    Gradients are taken with respect to `state.params` only; a state with `frozen` parts (LoRA) runs
    the model on both, the frozen ones a constant of the differentiation. `dropout_seed` (LoRA
    dropout): the gradient pass of micro-batch i of step s draws its dropout masks from
    fold_in(fold_in(key(dropout_seed), s), i) (`rho_jax.models.lora.set_lora_dropout`); the
    selection's forward passes run without dropout, as inference does."""
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}.")
    if precomputed_reference and ref_graphdef is not None:
        raise ValueError("a precomputed reference replaces the reference model; pass ref_graphdef=None.")
    has_reference = ref_graphdef is not None or precomputed_reference
    slm.check_reference(cfg, has_reference)
    # Global selection across micro-batches must see every micro-batch's scores before any gradient.
    preselect = not cfg.selects_all and cfg.scope == "global" and accumulation_steps > 1

    def token_losses(graphdef, params, batch, with_entropy=False):
        return slm.model_token_losses(graphdef, params, batch, chunk_size=cfg.ce_chunk_size, with_entropy=with_entropy)

    def trained_token_losses(params, batch, dropout_key):
        """Per-token losses of the trained model in a gradient pass (with LoRA dropout when keyed)."""
        if dropout_key is None:
            return token_losses(model_graphdef, params, batch)[0]
        model = nnx.merge(model_graphdef, params)
        set_lora_dropout(model, dropout_key)
        return token_losses(*nnx.split(model), batch)[0]

    def reference_scores(ref_params, micro):
        """(L_ref, H_ref or None) of every micro-batch, read from the batch or computed without gradient."""
        if precomputed_reference:
            return micro["ref_loss"], micro["ref_entropy"] if cfg.needs_entropy else None
        if not has_reference:
            return None, None
        return jax.lax.stop_gradient(jax.lax.map(
            lambda m: token_losses(ref_graphdef, ref_params, m, cfg.needs_entropy), micro))

    def global_selection(params, micro, ref_loss, ref_entropy):
        """The selection over the whole global batch, in its row order (so ties break exactly as
        without accumulation), split back into micro-batches."""
        loss = jax.lax.map(lambda m: token_losses(model_graphdef, params, m)[0], micro) if cfg.needs_model_loss else None
        in_order = lambda x: None if x is None else merge_micro_batches(x)
        selected = select_in_scope(cfg, *(in_order(x) for x in (micro["valid"], loss, ref_loss, ref_entropy)))
        return split_micro_batches({"selected": selected}, accumulation_steps)["selected"]

    def objective(params, frozen, micro_batch):
        """(sum of L_theta over the selected tokens, loss sums) of one micro-batch."""
        batch, ref_loss, ref_entropy, selected, dropout_key = micro_batch
        loss = trained_token_losses(model_state(params, frozen), batch, dropout_key)
        if selected is None:
            scored_loss = jax.lax.stop_gradient(loss) if cfg.needs_model_loss else None
            selected = select_in_scope(cfg, batch["valid"], scored_loss, ref_loss, ref_entropy)
        sums = slm.loss_sums(loss, selected, batch["valid"], ref_loss)
        return sums["selected_loss_sum"], sums

    def step(state: TrainState, batch: dict, ref_params: nnx.State | None) -> tuple[TrainState, dict]:
        params = state.params
        micro = split_micro_batches(batch, accumulation_steps)
        ref_loss, ref_entropy = reference_scores(ref_params, micro)
        selected = global_selection(state.model_params, micro, ref_loss, ref_entropy) if preselect else None
        loss_shape = jax.ShapeDtypeStruct(micro["valid"].shape[1:], jnp.float32)
        mask_shape = jax.ShapeDtypeStruct(micro["valid"].shape[1:], jnp.bool_)
        sums_shape = jax.eval_shape(slm.loss_sums, loss_shape, mask_shape, mask_shape,
                                    loss_shape if has_reference else None)
        dropout_keys = None
        if dropout_seed is not None:
            step_key = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
            dropout_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(accumulation_steps))
        grads, sums = accumulate(lambda p, m: objective(p, state.frozen, m), params,
                                 (micro, ref_loss, ref_entropy, selected, dropout_keys), sums_shape)
        # d/dθ [sum(selected * L) / K] with K the number of selected tokens in the global batch.
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["num_selected"], 1.0), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_state = TrainState(step=state.step + 1, params=optax.apply_updates(params, updates), opt_state=opt_state,
                               frozen=state.frozen)
        metrics = slm.finalize_metrics(sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    return step


def state_shardings(params: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh,
                    frozen: nnx.State | None = None) -> TrainState:
    """Shardings of a TrainState: parameters (and the `frozen` rest, if any) by the logical-axis
    rules, optimizer moments like their parameters, scalars (step, counts) replicated."""
    params_sharding = param_shardings(params, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_sharding = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract_opt, params_sharding,
        transform_non_params=lambda _: replicated(mesh),
    )
    frozen_sharding = None if frozen is None else param_shardings(frozen, mesh)
    return TrainState(step=replicated(mesh), params=params_sharding, opt_state=opt_sharding, frozen=frozen_sharding)


def init_train_state(model: Llama, optimizer: optax.GradientTransformation, mesh: Mesh) -> tuple[TrainState, TrainState]:
    """(state placed on `mesh`, its shardings) for a copy of `model`'s parameters.

    The copy matters: the train step donates its state, which must never free `model`'s arrays.
    """
    params = nnx.state(model, nnx.Param)
    shardings = state_shardings(params, optimizer, mesh)
    params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.params)(params)
    return new_train_state(params, optimizer, shardings), shardings


def new_train_state(params: nnx.State, optimizer: optax.GradientTransformation, shardings: TrainState,
                    frozen: nnx.State | None = None) -> TrainState:
    """Step 0 with fresh optimizer state for `params` (already placed with `shardings.params`;
    `frozen` with `shardings.frozen`)."""
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state, frozen=frozen)


def place_reference(reference: Llama, mesh: Mesh) -> tuple[nnx.State, Any]:
    """The reference model's parameters sharded by the same rules on the same mesh (never updated)."""
    params = nnx.state(reference, nnx.Param)
    shardings = param_shardings(params, mesh)
    return jax.device_put(params, shardings), shardings


def jit_train_step(
    step: Callable, shardings: TrainState, ref_shardings: Any, mesh: Mesh, batch_keys: tuple[str, ...]
) -> Callable:
    """`step` jitted with explicit shardings (batch over data+fsdp) and the train state donated."""
    batch = {k: batch_sharding(mesh) for k in batch_keys}

    def step_on_mesh(state, batch, ref_params):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # lets the model pin activations' batch axis to (data, fsdp)
            return step(state, batch, ref_params)

    return jax.jit(
        step_on_mesh,
        in_shardings=(shardings, batch, ref_shardings),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )
