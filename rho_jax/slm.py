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

import functools
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


def _logits(hidden: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.einsum("btd,dv->btv", hidden, weights, preferred_element_type=jnp.float32)


def _to_chunks(x: jax.Array, chunk_size: int) -> jax.Array:
    """`[B, T, ...]` -> `[n_chunks, B, chunk_size, ...]`, the sequence zero-padded to whole chunks
    (the batch axis stays whole, so its sharding is kept)."""
    batch, seq_len = x.shape[:2]
    n_chunks = -(-seq_len // chunk_size)
    pad = [(0, 0), (0, n_chunks * chunk_size - seq_len)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad).reshape(batch, n_chunks, chunk_size, *x.shape[2:]).swapaxes(0, 1)


def _from_chunks(x: jax.Array, seq_len: int) -> jax.Array:
    """Inverse of `_to_chunks`."""
    return x.swapaxes(0, 1).reshape(x.shape[1], -1, *x.shape[3:])[:, :seq_len]


def _is_chunked(chunk_size: int | None, seq_len: int) -> bool:
    return chunk_size is not None and chunk_size < seq_len


def _chunked(fn, chunk_size: int | None, *xs: jax.Array):
    """`fn` applied to sequence chunks of the `[B, T, ...]` arrays `xs` one chunk at a time
    (`lax.map`), results put back to `[B, T, ...]`; one call on the whole arrays without chunking."""
    seq_len = xs[0].shape[1]
    if not _is_chunked(chunk_size, seq_len):
        return fn(*xs)
    out = jax.lax.map(lambda args: fn(*args), tuple(_to_chunks(x, chunk_size) for x in xs))
    return jax.tree.map(lambda y: _from_chunks(y, seq_len), out)


def _token_stats(hidden: jax.Array, weights: jax.Array, targets: jax.Array, with_entropy: bool = False):
    """(loss, log Z, entropy or None) per position of one block: log Z = logsumexp(logits),
    loss = log Z - logits[target], entropy = log Z - sum(softmax(logits) * logits)."""
    logits = _logits(hidden, weights)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    loss = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    if not with_entropy:
        return loss, log_z, None
    return loss, log_z, log_z - jnp.sum(jnp.exp(logits - log_z[..., None]) * logits, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _cross_entropy(hidden: jax.Array, weights: jax.Array, targets: jax.Array, chunk_size: int | None) -> jax.Array:
    return _cross_entropy_forward(hidden, weights, targets, chunk_size)[0]


def _cross_entropy_forward(hidden, weights, targets, chunk_size):
    loss, log_z, _ = _chunked(lambda h, y: _token_stats(h, weights, y), chunk_size, hidden, targets)
    return loss, (hidden, weights, targets, log_z)


def _cross_entropy_backward(chunk_size, residuals, g):
    """d loss[b,t] / d logits[b,t,v] = softmax(logits)[v] - [v == target]: each chunk's logits are
    recomputed (one matmul) and turned into the gradients of hidden and weights right away, so no
    `[B, T, V]` array exists when chunked. The one-hot is a comparison fused into that expression
    (no scatter), and the softmax reuses the forward's log Z."""
    hidden, weights, targets, log_z = residuals

    def chunk_grads(h, y, lz, gc):
        logits = _logits(h, weights)
        one_hot = jnp.arange(logits.shape[-1]) == y[..., None]
        d_logits = ((jnp.exp(logits - lz[..., None]) - one_hot) * gc[..., None]).astype(h.dtype)
        d_hidden = jnp.einsum("btv,dv->btd", d_logits, weights, preferred_element_type=jnp.float32)
        d_weights = jnp.einsum("btd,btv->dv", h, d_logits, preferred_element_type=jnp.float32)
        return d_hidden.astype(h.dtype), d_weights

    if not _is_chunked(chunk_size, hidden.shape[1]):
        d_hidden, d_weights = chunk_grads(hidden, targets, log_z, g)
    else:
        def accumulate(d_weights, xs):
            d_h, d_w = chunk_grads(*xs)
            return d_weights + d_w, d_h

        chunks = tuple(_to_chunks(x, chunk_size) for x in (hidden, targets, log_z, g))
        d_weights, d_hidden = jax.lax.scan(accumulate, jnp.zeros(weights.shape, jnp.float32), chunks)
        d_hidden = _from_chunks(d_hidden, hidden.shape[1])
    return d_hidden, d_weights.astype(weights.dtype), None


_cross_entropy.defvjp(_cross_entropy_forward, _cross_entropy_backward)


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
    With `chunk_size`, the sequence is processed `chunk_size` positions at a time, so only one
    `[B, chunk, V]` block of fp32 logits exists at once, forward and backward.

    The loss is differentiable through a fused backward pass (`_cross_entropy_backward`): the
    forward keeps only log Z per token; the backward recomputes the logits chunk by chunk (one extra
    matmul, the price of never holding `[B, T, V]`) and forms both gradients from
    `softmax - one_hot`. With `with_entropy` (frozen models: the reference, scoring) the results
    carry no gradient.
    """
    weights = output_embedding.astype(hidden.dtype)
    if not with_entropy:
        return _cross_entropy(hidden, weights, targets, chunk_size), None

    hidden, weights = jax.lax.stop_gradient((hidden, weights))
    loss, _, entropy = _chunked(lambda h, y: _token_stats(h, weights, y, True), chunk_size, hidden, targets)
    return loss, entropy


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
