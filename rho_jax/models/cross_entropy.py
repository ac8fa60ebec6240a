"""Per-token cross-entropy of a model's final hidden states, chunked, with a fused backward pass.

For hidden states h `[B, T, D]` and the output embedding W `[D, V]`: logits = h W,
log Z = logsumexp(logits), loss = log Z - logits[target], entropy = log Z - sum(softmax * logits).
Chunking the sequence keeps at most one `[B, chunk, V]` block of fp32 logits alive, forward and
backward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


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
