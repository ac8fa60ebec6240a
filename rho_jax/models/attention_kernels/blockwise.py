"""Blockwise (flash-style) attention in plain XLA: memory linear in the sequence length, every backend.

For queries `[B, T, N, H]`, keys/values `[B, T, K, H]` (N = K * G) and a `DocumentMask`, computes

    out[b, t, n] = sum_s softmax_s(q[b, t, n] . k[b, s, n // G] / sqrt(H), visible(t, s))[s] * v[b, s, n // G]

without the T x T logits. The sequence is cut into blocks of `block_size` tokens (the last padded);
query block i visits only the key blocks that causality and the window leave visible (j <= i, and
j >= (i * block - window + 1) // block), keeping a running maximum m, denominator l and unnormalized
output per query row (online softmax, fp32). The forward pass saves only the output and
lse = m + log(l); the backward pass (a custom VJP) recomputes each block's probabilities
p = exp(s - lse) and accumulates, per key block j over its visible query blocks,

    dv_j += p^T dO,   ds = p * (dO v_j^T - rowsum(dO * out)) / sqrt(H),   dk_j += ds^T q,   dq_i += ds k_j.

Logits and accumulators are fp32; products of probabilities with values use the dtype of `v`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rho_jax.models.attention_kernels.mask import DocumentMask

_MASKED = -1e30  # finite, so that a block with no visible key for a row gives exp(0) * 0, never NaN


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: DocumentMask, block_size: int = 128) -> jax.Array:
    """The formula above; returns `[B, T, N, H]` in the dtype of `v`. `block_size` >= 1 tokens."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    batch, seq_len, n_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    block = min(block_size, seq_len)
    padded = -(-seq_len // block) * block
    documents = (jnp.zeros((1, seq_len), jnp.int32) if mask.documents is None
                 else jnp.asarray(mask.documents, jnp.int32))
    if padded != seq_len:  # padded keys lie after every real query, so causality hides them
        widths = ((0, 0), (0, padded - seq_len), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths)
        documents = jnp.pad(documents, ((0, 0), (0, padded - seq_len)), constant_values=-1)
    qh = q.reshape(batch, padded, kv_heads, n_heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]
    out = _attention(qh, kh, vh, documents, mask.sliding_window, block)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, padded, n_heads, head_dim)[:, :seq_len]


def _first_key_block(i: jax.Array, window: int | None, block: int) -> jax.Array:
    """The first key block with a key visible to some query of query block i."""
    return 0 if window is None else jnp.maximum(0, i * block - window + 1) // block


def _end_query_block(j: jax.Array, window: int | None, block: int, n_blocks: int) -> jax.Array:
    """One past the last query block with a query that sees some key of key block j."""
    return n_blocks if window is None else jnp.minimum(n_blocks, ((j + 1) * block + window - 2) // block + 1)


def _visible(i: jax.Array, j: jax.Array, docs_q: jax.Array, docs_k: jax.Array, window: int | None, block: int) -> jax.Array:
    """Visibility `[B|1, 1, 1, block, block]` of key block j to query block i."""
    rows = i * block + jnp.arange(block)[:, None]
    cols = j * block + jnp.arange(block)[None, :]
    visible = cols <= rows
    if window is not None:
        visible &= rows - cols < window
    return (visible[None] & (docs_q[:, :, None] == docs_k[:, None, :]))[:, None, None]


def _block(x: jax.Array, index: jax.Array, block: int, axis: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, index * block, block, axis=axis)


def _forward(q, k, v, documents, window, block):
    """Output `[B, K, G, T, H]` (dtype of v) and lse `[B, K, G, T]` (fp32)."""
    n_blocks = q.shape[3] // block
    scale = q.shape[-1] ** -0.5

    def query_block(i):
        q_i, docs_q = _block(q, i, block, 3), _block(documents, i, block, 1)

        def key_block(j, carry):
            m, denominator, acc = carry
            k_j, v_j, docs_k = _block(k, j, block, 2), _block(v, j, block, 2), _block(documents, j, block, 1)
            s = jnp.einsum("bkgqh,bksh->bkgqs", q_i, k_j, preferred_element_type=jnp.float32) * scale
            visible = _visible(i, j, docs_q, docs_k, window, block)
            m_new = jnp.maximum(m, jnp.max(jnp.where(visible, s, _MASKED), axis=-1))
            p = jnp.where(visible, jnp.exp(s - m_new[..., None]), 0.0)
            alpha = jnp.exp(m - m_new)
            pv = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v.dtype), v_j, preferred_element_type=jnp.float32)
            return m_new, alpha * denominator + p.sum(-1), alpha[..., None] * acc + pv

        shape = q_i.shape[:-1]
        init = (jnp.full(shape, _MASKED, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(q_i.shape, jnp.float32))
        m, denominator, acc = jax.lax.fori_loop(_first_key_block(i, window, block), i + 1, key_block, init)
        return (acc / denominator[..., None]).astype(v.dtype), m + jnp.log(denominator)

    out, lse = jax.lax.map(query_block, jnp.arange(n_blocks))  # [n, B, K, G, block, ...]
    out = jnp.moveaxis(out, 0, 3).reshape(q.shape[:-1] + (v.shape[-1],))
    lse = jnp.moveaxis(lse, 0, 3).reshape(q.shape[:-1])
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, documents, window, block):
    return _forward(q, k, v, documents, window, block)[0]


def _attention_fwd(q, k, v, documents, window, block):
    out, lse = _forward(q, k, v, documents, window, block)
    return out, (q, k, v, documents, out, lse)


def _attention_bwd(window, block, residuals, d_out):
    q, k, v, documents, out, lse = residuals
    n_blocks = q.shape[3] // block
    scale = q.shape[-1] ** -0.5
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, T]

    def key_block(dq, j):
        k_j, v_j, docs_k = _block(k, j, block, 2), _block(v, j, block, 2), _block(documents, j, block, 1)

        def query_block(i, carry):
            dq, dk, dv = carry
            q_i, do_i, docs_q = _block(q, i, block, 3), _block(d_out, i, block, 3), _block(documents, i, block, 1)
            lse_i, delta_i = _block(lse, i, block, 3), _block(delta, i, block, 3)
            s = jnp.einsum("bkgqh,bksh->bkgqs", q_i, k_j, preferred_element_type=jnp.float32) * scale
            p = jnp.where(_visible(i, j, docs_q, docs_k, window, block), jnp.exp(s - lse_i[..., None]), 0.0)
            dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bkgqh,bksh->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_i[..., None]) * scale
            dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds.astype(q_i.dtype), q_i, preferred_element_type=jnp.float32)
            dq_i = _block(dq, i, block, 3) + jnp.einsum("bkgqs,bksh->bkgqh", ds.astype(k_j.dtype), k_j,
                                                         preferred_element_type=jnp.float32)
            return jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * block, axis=3), dk, dv

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(j, _end_query_block(j, window, block, n_blocks), query_block, (dq, zeros, zeros))
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(n_blocks))
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)
