"""Masked grouped-query attention, and the choice of kernel that computes it.

For queries q `[B, T, N, H]`, keys and values k, v `[B, S, K, H]` with N = K * G (each group of G
query heads shares one key/value head) and a boolean mask `[B|1, 1, T, S]`:

    out[b, t, n] = sum_s softmax_s(q[b, t, n] . k[b, s, n // G] / sqrt(H), masked)[s] * v[b, s, n // G]

Implementations (`ModelOptions.attention`):
    grouped  this module's XLA formulation in head-major layout `[B, K, G, T, H]`: fp32 logits and
             softmax, like `jax.nn.dot_product_attention`'s XLA path, but laid out so XLA:CPU runs
             the forward and especially the backward pass without large transposes (compare
             with `python -m rho_jax.bench --attention xla`);
    xla      `jax.nn.dot_product_attention(implementation="xla")`;
    cudnn    the fused cuDNN kernel (NVIDIA GPUs, bf16/fp16);
    auto     `grouped` on CPU, elsewhere `jax.nn.dot_product_attention`'s own choice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ATTENTION_IMPLEMENTATIONS = ("auto", "grouped", "xla", "cudnn")


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """The formula above in head-major layout; returns `[B, T, N, H]` in the dtype of `v`."""
    batch, seq_len, n_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = n_heads // kv_heads
    q = q.reshape(batch, seq_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    k = k.transpose(0, 2, 1, 3)  # [B, K, S, H]
    v = v.transpose(0, 2, 1, 3)
    logits = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, seq_len, n_heads, head_dim)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str) -> jax.Array:
    """Attention with the named implementation (one of `ATTENTION_IMPLEMENTATIONS`)."""
    if implementation == "grouped" or (implementation == "auto" and jax.default_backend() == "cpu"):
        return grouped_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=None if implementation == "auto" else implementation)
