"""The head-major grouped-query attention against NumPy and against jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax.models.attention import attend, grouped_attention
from rho_jax.models.llama import attention_mask


def _inputs(seed=0, batch=2, seq=12, heads=4, kv_heads=2, head_dim=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, seq, heads, head_dim)).astype(np.float32)
    k = rng.normal(size=(batch, seq, kv_heads, head_dim)).astype(np.float32)
    v = rng.normal(size=(batch, seq, kv_heads, head_dim)).astype(np.float32)
    segment_ids = np.repeat(np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0], [1] * 12]), 1, axis=0)
    mask = attention_mask(seq, jnp.asarray(segment_ids), sliding_window=4)
    return q, k, v, mask


def _numpy_attention(q, k, v, mask):
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    logits = np.where(np.asarray(mask), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def test_grouped_attention_matches_numpy_with_documents_and_window():
    q, k, v, mask = _inputs()
    np.testing.assert_allclose(np.asarray(grouped_attention(q, k, v, mask)), _numpy_attention(q, k, v, mask),
                               rtol=1e-5, atol=1e-5)


def test_grouped_attention_gradients_match_jax_xla_attention():
    q, k, v, mask = _inputs(seed=1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

    def objective(implementation):
        return lambda *qkv: jnp.sum(attend(*qkv, mask, implementation) * weights)

    ours = jax.grad(objective("grouped"), argnums=(0, 1, 2))(q, k, v)
    theirs = jax.grad(objective("xla"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_auto_uses_grouped_attention_on_cpu():
    q, k, v, mask = _inputs(seed=3)
    auto = jax.make_jaxpr(lambda *qkv: attend(*qkv, mask, "auto"))(q, k, v)
    grouped = jax.make_jaxpr(lambda *qkv: grouped_attention(*qkv, mask))(q, k, v)
    xla = jax.make_jaxpr(lambda *qkv: attend(*qkv, mask, "xla"))(q, k, v)
    assert str(auto) == str(grouped) != str(xla)
