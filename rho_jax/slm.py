"""Selective Language Modeling (Rho-1): per-token losses, score functions, global top-k selection, loss.

Notation, for one batch of positions `[B, T]` (target y = the next token, natural log):
    L_theta[b,t] = -log p_theta(y | x<=t)       the model being trained
    L_ref[b,t]   = -log p_ref(y | x<=t)         the frozen reference model
    H_ref[b,t]   = entropy of p_ref(. | x<=t)
Scores (higher is kept first, never differentiated):
    excess             L_theta - L_ref             (paper eq. 3, the default)
    reference_loss     -L_ref                      (drop what the reference finds noisy)
    reference_entropy  -H_ref
    intersection       kept by both reference_loss and reference_entropy, each at the ratio
Selection keeps the top k = ceil(ratio * n) of the n valid positions, ties broken by lower flat
index; the SLM loss is the mean of L_theta over the kept positions (eq. 4).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rho_jax.models.cross_entropy import token_losses
from rho_jax.sharding import BATCH_AXES, batch_sharding, replicated

SCORE_FUNCTIONS = ("excess", "reference_loss", "reference_entropy", "intersection")
SELECTION_SCOPES = ("global", "microbatch", "sequence")
RATIO_DENOMINATOR_LIMIT = 10_000


def validate_ratio(ratio: float) -> Fraction:
    """`ratio` as an exact fraction p/q with q <= 10,000 (0.7 means 7/10, 1/3 means 1/3).

    A ratio that no such fraction represents (e.g. 1e-5 or 0.99995) is refused rather than rounded.
    """
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}.")
    fraction = Fraction(ratio).limit_denominator(RATIO_DENOMINATOR_LIMIT)
    if fraction == 0 or float(fraction) != ratio:
        raise ValueError(
            f"ratio {ratio!r} is not a fraction with denominator <= {RATIO_DENOMINATOR_LIMIT} "
            "(use e.g. 0.6, 0.65, 0.0001 or 1/3)."
        )
    return fraction


def validate_score_function(kind: str) -> str:
    if kind not in SCORE_FUNCTIONS:
        raise ValueError(f"Unknown score function {kind!r}; choose one of {list(SCORE_FUNCTIONS)}.")
    return kind


@dataclasses.dataclass(frozen=True)
class SLMConfig:
    """ratio: fraction of valid tokens trained on (1.0 = all); score: one of `SCORE_FUNCTIONS`;
    scope: where the top k is taken (`SELECTION_SCOPES`: the whole global batch, each micro-batch,
    or each row; see `rho_jax.step`); ce_chunk_size: sequence positions per cross-entropy chunk
    (None = unchunked)."""

    ratio: float = 0.6
    score: str = "excess"
    scope: str = "global"
    ce_chunk_size: int | None = 512

    def __post_init__(self) -> None:
        validate_ratio(self.ratio)
        validate_score_function(self.score)
        if self.scope not in SELECTION_SCOPES:
            raise ValueError(f"slm.scope must be one of {SELECTION_SCOPES}, got {self.scope!r}.")
        if self.ce_chunk_size is not None and self.ce_chunk_size <= 0:
            raise ValueError(f"slm.ce_chunk_size must be a positive integer or null, got {self.ce_chunk_size}.")

    @property
    def needs_entropy(self) -> bool:
        """Whether the score reads the reference's entropy H_ref."""
        return self.score in ("reference_entropy", "intersection")

    @property
    def needs_model_loss(self) -> bool:
        """Whether the score reads the trained model's own loss L_theta (only `excess`)."""
        return self.score == "excess"

    @property
    def selects_all(self) -> bool:
        """ratio 1.0: every valid token is kept (no scores, no sort)."""
        return self.ratio == 1.0


def check_reference(cfg: SLMConfig, has_reference: bool, model_vocab_size: int | None = None,
                    reference_vocab_size: int | None = None) -> None:
    """Refuse what cannot be SLM: a reference-based score or a ratio below 1 without a reference
    (online or precomputed), and a reference whose vocabulary differs from the trained model's (the
    two must share the tokenizer; checked when both sizes are given)."""
    if not has_reference:
        if cfg.score != "excess":
            raise ValueError(f"score function {cfg.score!r} is computed from a reference model; none was given "
                             "(set `reference`: init hf, checkpoint or precomputed).")
        if cfg.ratio != 1.0:
            raise ValueError(
                f"slm.ratio={cfg.ratio} with score {cfg.score!r} needs a reference model; set `reference` "
                "(init: hf, checkpoint or precomputed), or slm.ratio: 1.0 for plain CLM training."
            )
    if model_vocab_size is not None and reference_vocab_size is not None and model_vocab_size != reference_vocab_size:
        raise ValueError(
            f"reference vocab_size {reference_vocab_size} != model vocab_size {model_vocab_size}: the reference "
            "must share the trained model's tokenizer."
        )


def num_to_select(n_valid: jax.Array, ratio: float) -> jax.Array:
    """k = ceil(ratio * n_valid), computed exactly in int32: with n = a*q + b and ratio = p/q,
    k = a*p + ceil(b*p / q), and b*p < q^2 <= 1e8 never overflows."""
    fraction = validate_ratio(ratio)
    p, q = fraction.numerator, fraction.denominator
    n = n_valid.astype(jnp.int32)
    a, b = n // q, n % q
    return a * p + (b * p + q - 1) // q


def model_token_losses(
    graphdef: nnx.GraphDef, params: nnx.State, batch: dict, *, chunk_size: int | None, with_entropy: bool = False
) -> tuple[jax.Array, jax.Array | None]:
    """Per-token (L, H or None) `[B, T]` of the model `(graphdef, params)` on `batch` (`input_ids`,
    `targets`, optional `segment_ids`, `positions`): the one computation of a model's per-token
    losses that training, the reference, scoring, evaluation, analysis and the benchmark share."""
    model = nnx.merge(graphdef, params)
    hidden = model.hidden_states(batch["input_ids"], batch.get("segment_ids"), batch.get("positions"))
    return token_losses(hidden, model.output_embedding(), batch["targets"], chunk_size=chunk_size,
                        with_entropy=with_entropy)


def token_losses_on_mesh(
    graphdef: nnx.GraphDef,
    mesh: Mesh,
    *,
    chunk_size: int | None,
    with_entropy: bool = False,
    reduce: Callable[[jax.Array, jax.Array | None, dict], Any] | None = None,
) -> Callable[[nnx.State, dict], Any]:
    """`(params, batch) -> (loss, entropy or None)` (or `reduce(loss, entropy, batch)`), jitted
    once, run on `mesh` with the batch sharded over (data, fsdp) and the results replicated.

    A batch of jax arrays is taken as placed (multi-process callers build it with
    `rho_jax.data.to_global_batch`). A host (NumPy) batch is placed here; its rows are padded with
    invalid all-zero rows to a multiple of the batch shards and the per-token results cut back, so
    any row count works (`reduce` must ignore rows whose `valid` is false).
    """

    def forward(params: nnx.State, batch: dict) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # lets the model pin activations' batch axis
            loss, entropy = model_token_losses(graphdef, params, batch, chunk_size=chunk_size, with_entropy=with_entropy)
        return (loss, entropy) if reduce is None else reduce(loss, entropy, batch)

    jitted = jax.jit(forward, out_shardings=replicated(mesh))
    shards = math.prod(mesh.shape[axis] for axis in BATCH_AXES)

    def call(params: nnx.State, batch: dict) -> Any:
        if any(isinstance(value, jax.Array) for value in batch.values()):
            return jitted(params, batch)
        rows = len(batch["input_ids"])
        padding = -rows % shards
        padded = {k: np.concatenate([v, np.zeros((padding, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        out = jitted(params, jax.device_put(padded, batch_sharding(mesh)))
        return jax.tree.map(lambda x: x[:rows], out) if reduce is None and padding else out

    call.lower = jitted.lower  # for compiled-memory analysis of placed batches (the benchmark)
    return call


def token_scores(
    kind: str,
    loss: jax.Array | None = None,
    ref_loss: jax.Array | None = None,
    ref_entropy: jax.Array | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Scores `[B, T]` (float32, `stop_gradient`) for `kind`; invalid positions score -inf.

    excess = loss - ref_loss; reference_loss = -ref_loss; reference_entropy = -ref_entropy.
    `intersection` is not one score: select with `reference_loss` and `reference_entropy`
    separately and combine the masks with `intersect_selections` (or use `select_by_score`).
    """
    validate_score_function(kind)
    if kind == "intersection":
        raise ValueError("intersection combines two selections: use select_by_score, or "
                         "intersect_selections of the reference_loss and reference_entropy selections.")
    required = {"excess": (loss, ref_loss), "reference_loss": (ref_loss,), "reference_entropy": (ref_entropy,)}[kind]
    if any(x is None for x in required):
        names = {"excess": "loss and ref_loss", "reference_loss": "ref_loss", "reference_entropy": "ref_entropy"}
        raise ValueError(f"score function {kind!r} needs {names[kind]} (a reference model).")
    if kind == "excess":
        scores = loss - ref_loss
    elif kind == "reference_loss":
        scores = -ref_loss
    else:
        scores = -ref_entropy
    scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
    if valid is not None:
        scores = jnp.where(valid, scores, -jnp.inf)
    return scores


def select_tokens(scores: jax.Array, valid: jax.Array, ratio: float) -> jax.Array:
    """Boolean mask (shape of `scores`) of the top `ceil(ratio * sum(valid))` valid positions.

    All positions of `scores` compete together (pass the whole global batch for the paper's
    selection). Exactly k positions are kept; among equal scores the lower flat index wins; invalid
    positions are never kept. Uses `jax.lax.top_k` with the static bound ceil(ratio * size).
    """
    # Valid positions rank above every invalid one, even with a -inf or NaN score.
    lowest = jnp.finfo(jnp.float32).min
    finite = jnp.nan_to_num(scores.astype(jnp.float32), nan=lowest, posinf=jnp.finfo(jnp.float32).max, neginf=lowest)
    flat_scores = jnp.where(valid, finite, -jnp.inf).reshape(-1)
    flat_valid = valid.reshape(-1)
    size = flat_scores.shape[0]
    k_max = min(size, math.ceil(validate_ratio(ratio) * size))
    k = num_to_select(jnp.sum(flat_valid), ratio)
    _, order = jax.lax.top_k(flat_scores, k_max)
    keep = jnp.arange(k_max) < k
    selected = jnp.zeros(size, bool).at[order].set(keep)
    return (selected & flat_valid).reshape(scores.shape)


def intersect_selections(first: jax.Array, second: jax.Array) -> jax.Array:
    """Positions kept by both selections (the paper's L_RM ∩ H_RM)."""
    return first & second


def select_by_score(
    kind: str,
    ratio: float,
    valid: jax.Array,
    loss: jax.Array | None = None,
    ref_loss: jax.Array | None = None,
    ref_entropy: jax.Array | None = None,
) -> jax.Array:
    """The selection mask for any score function, `intersection` included."""
    if validate_score_function(kind) == "intersection":
        by_loss = select_tokens(token_scores("reference_loss", ref_loss=ref_loss, valid=valid), valid, ratio)
        by_entropy = select_tokens(token_scores("reference_entropy", ref_entropy=ref_entropy, valid=valid), valid, ratio)
        return intersect_selections(by_loss, by_entropy)
    scores = token_scores(kind, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy, valid=valid)
    return select_tokens(scores, valid, ratio)


def loss_sums(
    loss: jax.Array, selected: jax.Array, valid: jax.Array, ref_loss: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Sums and counts behind the SLM loss and its metrics; add them across micro-batches, then
    call `finalize_metrics`. `selected_loss_sum` carries the gradient; everything else is stopped."""
    sel = selected.astype(jnp.float32)
    val = valid.astype(jnp.float32)
    stop = jax.lax.stop_gradient
    # where(), not multiplication: a NaN/inf loss at an excluded position must not leak into sums.
    masked = lambda mask: jnp.sum(jnp.where(mask, loss, 0.0))
    sums = {
        "selected_loss_sum": masked(selected),
        "valid_loss_sum": stop(masked(valid)),
        "unselected_loss_sum": stop(masked(valid & ~selected)),
        "num_selected": jnp.sum(sel),
        "num_valid": jnp.sum(val),
    }
    if ref_loss is not None:
        sums["ref_loss_sum"] = stop(jnp.sum(jnp.where(valid, ref_loss, 0.0)))
    return sums


def finalize_metrics(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """loss_selected, loss_unselected, loss_all, selected_fraction (+ ref_loss, excess_loss)."""
    stop = jax.lax.stop_gradient
    n_sel, n_val = sums["num_selected"], sums["num_valid"]
    selected_sum = stop(sums["selected_loss_sum"])
    metrics = {
        "loss_selected": selected_sum / jnp.maximum(n_sel, 1),
        "loss_unselected": sums["unselected_loss_sum"] / jnp.maximum(n_val - n_sel, 1),
        "loss_all": sums["valid_loss_sum"] / jnp.maximum(n_val, 1),
        "selected_fraction": n_sel / jnp.maximum(n_val, 1),
        "num_selected": n_sel,
        "num_valid": n_val,
    }
    if "ref_loss_sum" in sums:
        metrics["ref_loss"] = sums["ref_loss_sum"] / jnp.maximum(n_val, 1)
        metrics["excess_loss"] = metrics["loss_all"] - metrics["ref_loss"]
    return metrics


def slm_loss(
    loss: jax.Array, selected: jax.Array, valid: jax.Array, ref_loss: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(L_SLM, metrics): L_SLM = sum(selected * loss) / max(sum(selected), 1), eq. 4 of the paper.

    The gradient flows only through `loss` at selected positions. With every valid position
    selected this is the ordinary mean cross-entropy over valid positions.
    """
    sums = loss_sums(loss, selected, valid, ref_loss)
    return sums["selected_loss_sum"] / jnp.maximum(sums["num_selected"], 1), finalize_metrics(sums)
