"""Selective Language Modeling (Rho-1): per-token losses, score functions, global top-k selection, loss.

Notation (DESIGN.md section 2), for one batch of positions `[B, T]`:
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

import math
from fractions import Fraction

import jax
import jax.numpy as jnp

SCORE_FUNCTIONS = ("excess", "reference_loss", "reference_entropy", "intersection")
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


def num_to_select(n_valid: jax.Array, ratio: float) -> jax.Array:
    """k = ceil(ratio * n_valid), computed exactly in int32: with n = a*q + b and ratio = p/q,
    k = a*p + ceil(b*p / q), and b*p < q^2 <= 1e8 never overflows."""
    fraction = validate_ratio(ratio)
    p, q = fraction.numerator, fraction.denominator
    n = n_valid.astype(jnp.int32)
    a, b = n // q, n % q
    return a * p + (b * p + q - 1) // q


def token_losses(
    hidden: jax.Array,
    output_embedding: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Per-token cross-entropy `-log softmax(hidden @ W)[target]` (and the entropy of that softmax).

    hidden `[B, T, D]` (compute dtype), output_embedding W `[D, V]`, targets `[B, T]` int.
    Returns float32 `loss [B, T]` and `entropy [B, T]` (None unless `with_entropy`).
    With `chunk_size`, the sequence is processed `chunk_size` positions at a time under
    `jax.checkpoint`, so only one `[B, chunk, V]` block of fp32 logits exists at once, forward and
    backward; results and gradients equal the unchunked computation.
    """
    batch, seq_len, _ = hidden.shape
    weights = output_embedding.astype(hidden.dtype)

    def block(h: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = jnp.einsum("btd,dv->btv", h, weights, preferred_element_type=jnp.float32)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        loss = log_z - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        if not with_entropy:
            return loss, jnp.zeros_like(loss)
        probs = jnp.exp(logits - log_z[..., None])
        return loss, log_z - jnp.sum(probs * logits, axis=-1)

    if chunk_size is None or chunk_size >= seq_len:
        loss, entropy = block(hidden, targets)
    else:
        n_chunks = -(-seq_len // chunk_size)
        pad = n_chunks * chunk_size - seq_len
        h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        y = jnp.pad(targets, ((0, 0), (0, pad)))
        # [n_chunks, B, chunk, ...]: scan over sequence chunks, keeping the (sharded) batch axis.
        h = h.reshape(batch, n_chunks, chunk_size, -1).swapaxes(0, 1)
        y = y.reshape(batch, n_chunks, chunk_size).swapaxes(0, 1)
        loss, entropy = jax.lax.map(lambda args: jax.checkpoint(block)(*args), (h, y))
        loss = loss.swapaxes(0, 1).reshape(batch, -1)[:, :seq_len]
        entropy = entropy.swapaxes(0, 1).reshape(batch, -1)[:, :seq_len]
    return loss, (entropy if with_entropy else None)


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
