"""The SLM train step: one jitted, sharded `(state, batch, ref_params) -> (state, metrics)`.

Inside the step, for a global batch split into `accumulation_steps` micro-batches:
1. reference forward (no gradient, no stored activations): L_ref and, if the score needs it, H_ref;
   with a precomputed reference they are read from the batch (`ref_loss`, `ref_entropy`) instead;
2. forward of the trained model: per-token L_theta, chunked so no full `[B, T, V]` fp32 logits exist;
3. scores and selection (`rho_jax.slm`), over the scope chosen in `SLMConfig.scope`:
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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from rho_jax import slm
from rho_jax.models import Llama
from rho_jax.sharding import batch_sharding, constrain_batch_axis, param_shardings, replicated

SELECTION_SCOPES = ("global", "microbatch", "sequence")


@dataclasses.dataclass(frozen=True)
class SLMConfig:
    """ratio: fraction of valid tokens trained on (1.0 = all); score: one of `slm.SCORE_FUNCTIONS`;
    scope: selection scope (see module docstring); ce_chunk_size: sequence positions per
    cross-entropy chunk (None = unchunked)."""

    ratio: float = 0.6
    score: str = "excess"
    scope: str = "global"
    ce_chunk_size: int | None = 512

    def __post_init__(self) -> None:
        slm.validate_ratio(self.ratio)
        slm.validate_score_function(self.score)
        if self.scope not in SELECTION_SCOPES:
            raise ValueError(f"slm.scope must be one of {SELECTION_SCOPES}, got {self.scope!r}.")
        if self.ce_chunk_size is not None and self.ce_chunk_size <= 0:
            raise ValueError(f"slm.ce_chunk_size must be a positive integer or null, got {self.ce_chunk_size}.")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    opt_state: Any


def _check_reference_present(has_reference: bool, cfg: SLMConfig) -> None:
    if has_reference:
        return
    if cfg.score != "excess":
        raise ValueError(f"score function {cfg.score!r} is computed from a reference model; none was given.")
    if cfg.ratio != 1.0:
        raise ValueError(
            f"slm.ratio={cfg.ratio} with score {cfg.score!r} needs a reference model; "
            "without one only ratio 1.0 (plain CLM) is possible."
        )


def check_reference(model: Llama, reference: Llama | None, cfg: SLMConfig) -> None:
    """Refuse combinations that cannot be SLM: no reference with ratio < 1 or a reference-based
    score, mismatched vocabularies (the reference must share the tokenizer)."""
    _check_reference_present(reference is not None, cfg)
    if reference is None:
        return
    if reference.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"reference vocab_size {reference.config.vocab_size} != model vocab_size "
            f"{model.config.vocab_size}: the reference must share the trained model's tokenizer."
        )


def model_token_losses(graphdef: nnx.GraphDef, params: nnx.State, batch: dict, chunk: int | None, with_entropy: bool):
    """Per-token (loss, entropy or None) `[B, T]` of the model `(graphdef, params)` on `batch`."""
    model = nnx.merge(graphdef, params)
    hidden = model.hidden_states(batch["input_ids"], batch.get("segment_ids"), batch.get("positions"))
    return slm.token_losses(hidden, model.output_embedding(), batch["targets"], chunk_size=chunk, with_entropy=with_entropy)


def _split_micro(batch: dict, steps: int) -> dict:
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


def _merge_micro(x: jax.Array) -> jax.Array:
    """Inverse of `_split_micro`: back to the global batch's row order."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def build_train_step(
    model_graphdef: nnx.GraphDef,
    ref_graphdef: nnx.GraphDef | None,
    cfg: SLMConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    accumulation_steps: int = 1,
    precomputed_reference: bool = False,
) -> Callable[[TrainState, dict, nnx.State | None], tuple[TrainState, dict]]:
    """The pure step function (not jitted; see `jit_train_step`). With `precomputed_reference` (and
    no `ref_graphdef`) the reference's per-token loss and entropy come with the batch."""
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}.")
    if precomputed_reference and ref_graphdef is not None:
        raise ValueError("a precomputed reference replaces the reference model; pass ref_graphdef=None.")
    has_reference = ref_graphdef is not None or precomputed_reference
    _check_reference_present(has_reference, cfg)
    needs_entropy = cfg.score in ("reference_entropy", "intersection")
    needs_model_loss = cfg.score == "excess"
    # Global selection across micro-batches must see every micro-batch's scores before any gradient
    # (not needed at ratio 1.0, where every valid token is kept).
    preselect = has_reference and cfg.ratio != 1.0 and cfg.scope == "global" and accumulation_steps > 1

    def select(loss, ref_loss, ref_entropy, valid):
        """Selection mask over all positions given (global), or row by row (sequence scope)."""
        if not has_reference or cfg.ratio == 1.0:  # every valid token is kept: no sort needed
            return valid

        def pick(l, r, e, v):
            return slm.select_by_score(cfg.score, cfg.ratio, v, loss=l, ref_loss=r, ref_entropy=e)

        if cfg.scope == "sequence":
            def row(*xs):
                return pick(*(None if x is None else x[None] for x in xs))[0]

            return jax.vmap(row)(loss, ref_loss, ref_entropy, valid)
        return pick(loss, ref_loss, ref_entropy, valid)

    def reference(ref_params, micro):
        loss, entropy = model_token_losses(ref_graphdef, ref_params, micro, cfg.ce_chunk_size, needs_entropy)
        return jax.lax.stop_gradient(loss), None if entropy is None else jax.lax.stop_gradient(entropy)

    def model_loss(params, micro):
        return model_token_losses(model_graphdef, params, micro, cfg.ce_chunk_size, False)[0]

    def step(state: TrainState, batch: dict, ref_params: nnx.State | None) -> tuple[TrainState, dict]:
        params = state.params
        micro = _split_micro(batch, accumulation_steps)
        ref_loss = ref_entropy = selected = None
        if precomputed_reference:
            ref_loss, ref_entropy = micro["ref_loss"], micro["ref_entropy"] if needs_entropy else None
        elif has_reference:
            ref_loss, ref_entropy = jax.lax.map(lambda m: reference(ref_params, m), micro)
        if preselect:
            scored = jax.lax.map(lambda m: model_loss(params, m), micro) if needs_model_loss else None
            # Select in the global batch's row order, so ties break exactly as without accumulation.
            in_order = lambda x: None if x is None else _merge_micro(x)
            selected = select(in_order(scored), in_order(ref_loss), in_order(ref_entropy), in_order(micro["valid"]))
            selected = _split_micro({"selected": selected}, accumulation_steps)["selected"]

        def micro_step(carry, xs):
            mb, mb_ref_loss, mb_ref_entropy, mb_selected = xs

            def objective(p):
                loss = model_loss(p, mb)
                chosen = mb_selected
                if chosen is None:
                    scored_loss = jax.lax.stop_gradient(loss) if needs_model_loss else None
                    chosen = select(scored_loss, mb_ref_loss, mb_ref_entropy, mb["valid"])
                sums = slm.loss_sums(loss, chosen, mb["valid"], mb_ref_loss)
                return sums["selected_loss_sum"], sums

            (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        loss_shape = jax.ShapeDtypeStruct(micro["valid"].shape[1:], jnp.float32)
        mask_shape = jax.ShapeDtypeStruct(micro["valid"].shape[1:], jnp.bool_)
        sums_shape = jax.eval_shape(slm.loss_sums, loss_shape, mask_shape, mask_shape,
                                    loss_shape if has_reference else None)
        init = jax.tree.map(jnp.zeros_like, (params, sums_shape))
        (grads, sums), _ = jax.lax.scan(micro_step, init, (micro, ref_loss, ref_entropy, selected))
        # d/dθ [sum(selected * L) / K] with K the number of selected tokens in the global batch.
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["num_selected"], 1.0), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_state = TrainState(step=state.step + 1, params=optax.apply_updates(params, updates), opt_state=opt_state)
        metrics = slm.finalize_metrics(sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    return step


def state_shardings(params: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shardings of a TrainState: parameters by the logical-axis rules, optimizer moments like
    their parameters, scalars (step, counts) replicated."""
    params_sharding = param_shardings(params, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_sharding = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract_opt, params_sharding,
        transform_non_params=lambda _: replicated(mesh),
    )
    return TrainState(step=replicated(mesh), params=params_sharding, opt_state=opt_sharding)


def init_train_state(model: Llama, optimizer: optax.GradientTransformation, mesh: Mesh) -> tuple[TrainState, TrainState]:
    """(state placed on `mesh`, its shardings) for a copy of `model`'s parameters.

    The copy matters: the train step donates its state, which must never free `model`'s arrays.
    """
    params = nnx.state(model, nnx.Param)
    shardings = state_shardings(params, optimizer, mesh)
    params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.params)(params)
    return new_train_state(params, optimizer, shardings), shardings


def new_train_state(params: nnx.State, optimizer: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """Step 0 with fresh optimizer state for `params` (already placed with `shardings.params`)."""
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)


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
