"""The cached forward pass of `Llama` for generation: prefill a prompt batch, then decode one token per row.

Layout: a `KVCache` holds the rotated keys and the values of every layer, stacked like the layer
parameters, head-major so that decoding reads each layer's cache without a transpose:
`k, v [layers, batch, kv_heads, length, head_dim]` in the compute dtype. Cache index = rotary
position: a row's token i (0-based, counted from its first prompt token) lives at index i.

Prompts are RIGHT-padded: row b holds its `lengths[b]` real tokens at positions 0..lengths[b]-1
followed by padding. Causality keeps real queries from seeing the padding after them, so prefill
uses the training mask (causal, plus the sliding window of Mistral); the padding's cache entries
are overwritten by the row's next tokens and never attended to: decoding the token at position p
attends to cache indices j with j <= p (and p - j < sliding_window).

Both passes run the model's own modules (norms, projections, rotary, MLP) with its `ModelOptions`
(compute dtype, `scan_layers`); fp32 logits equal those of the full forward `model(input_ids)` up to
float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rho_jax.models.attention import attend
from rho_jax.models.config import ModelConfig
from rho_jax.models.llama import DecoderLayer, Llama, document_mask
from rho_jax.models.rope import inverse_frequencies, rotary_cos_sin
from rho_jax.sharding import BATCH_AXES, constrain_batch_axis, logical_to_spec


class KVCache(NamedTuple):
    """Keys and values of every layer: `[layers, batch, kv_heads, length, head_dim]` each."""

    k: jax.Array
    v: jax.Array


CACHE_LOGICAL_AXES = ("layers", None, "kv_heads", None, "head_dim")  # the batch axis goes over BATCH_AXES


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: jnp.dtype) -> KVCache:
    """A zero cache for `batch` rows of `length` positions."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, length, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def batch_shards(mesh: Mesh | jax.sharding.AbstractMesh) -> int:
    """How many ways a mesh splits the batch axis (`data` x `fsdp`)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def cache_sharding(mesh: Mesh, cfg: ModelConfig, batch: int, length: int) -> NamedSharding:
    """Sharding of the cache arrays: batch over (`data`, `fsdp`) when they divide it, kv heads over
    `tensor` when it divides them (`LOGICAL_AXIS_RULES`), everything else replicated."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, length, cfg.head_dim)
    spec = list(logical_to_spec(CACHE_LOGICAL_AXES, shape, mesh))
    spec[1] = BATCH_AXES if batch % batch_shards(mesh) == 0 else None
    return NamedSharding(mesh, PartitionSpec(*spec))


def constrain_batch(x: jax.Array) -> jax.Array:
    """`constrain_batch_axis` for activations whose batch the mesh's batch shards divide; others
    (e.g. a single prompt on a data-parallel mesh) are left to XLA."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return constrain_batch_axis(x) if x.shape[0] % batch_shards(mesh) == 0 else x


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of queries `[B, T, N, H]` over head-major cache keys/values
    `[B, K, S, H]` with a boolean mask `[B, T, S]`; fp32 logits and softmax (as
    `rho_jax.models.attention.grouped_attention`), output `[B, T, N, H]` in the dtype of `v`.
    Both products are batched over (B, K) so the cache is read in its stored layout."""
    batch, steps, n_heads, head_dim = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(batch, steps, kv_heads, n_heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    logits = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, steps, n_heads, head_dim)


def _rotary(model: Llama, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = model.config
    return rotary_cos_sin(positions, inverse_frequencies(cfg.rope_parameters, cfg.head_dim))


def _mlp_block(layer: DecoderLayer, x: jax.Array) -> jax.Array:
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _last_token_logits(model: Llama, x: jax.Array, index: jax.Array) -> jax.Array:
    """float32 logits `[B, V]` of the final-norm hidden state at `index[b]` of each row of `x [B, T, D]`."""
    last = x[jnp.arange(x.shape[0]), index][:, None]
    return model.logits(model.norm(last))[:, 0]


def _run_layers(model: Llama, step: Callable, carry: Any) -> tuple[Any, Any]:
    """Apply `step(layer, carry, layer_index) -> (carry, out)` over the stacked layers: with
    `lax.scan` when `scan_layers`, else an unrolled loop; returns (carry, outputs stacked per layer)."""
    graphdef, stacked = nnx.split(model.layers)
    n_layers = model.config.num_hidden_layers

    def body(c, xs):
        layer_state, index = xs
        return step(nnx.merge(graphdef, layer_state), c, index)

    xs = (stacked, jnp.arange(n_layers))
    if model.options.scan_layers:
        return jax.lax.scan(body, carry, xs)
    outs = []
    for i in range(n_layers):
        carry, out = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
        outs.append(out)
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *outs)


def prefill(model: Llama, input_ids: jax.Array, lengths: jax.Array, cache_length: int | None = None
            ) -> tuple[jax.Array, KVCache]:
    """Run right-padded prompts `input_ids [B, T]` with `lengths [B]` real tokens (1 <= lengths <= T).

    Returns the float32 logits `[B, V]` of each row's last real token and a cache of
    `cache_length` (default T, at least T) positions holding positions 0..T-1.
    """
    cfg = model.config
    batch, seq_len = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
    cos, sin = _rotary(model, positions)
    mask = document_mask(None, cfg.sliding_window)

    def step(layer: DecoderLayer, x: jax.Array, index: jax.Array):
        q, k, v = layer.self_attn.project(layer.input_layernorm(x), cos, sin)
        x = x + layer.self_attn.o_proj(attend(q, k, v, mask, layer.self_attn.implementation))
        return constrain_batch(_mlp_block(layer, x)), (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))

    x, (keys, values) = _run_layers(model, step, constrain_batch(model.embed(input_ids)))
    pad = max(0, (cache_length or seq_len) - seq_len)
    widths = ((0, 0), (0, 0), (0, 0), (0, pad), (0, 0))
    return _last_token_logits(model, x, lengths - 1), KVCache(jnp.pad(keys, widths), jnp.pad(values, widths))


def decode_step(model: Llama, cache: KVCache, tokens: jax.Array, positions: jax.Array,
                attention_length: int | None = None) -> tuple[jax.Array, KVCache]:
    """Feed one token per row (`tokens [B]` at rotary positions `positions [B]`, which are also the
    cache indices where their keys/values are written) and return the float32 next-token logits
    `[B, V]` and the updated cache. Row b attends to cache indices j <= positions[b] (and
    positions[b] - j < sliding_window); a position beyond the cache writes nothing.

    attention_length: read only the first this many cache positions (default: all); every
    position that matters must lie below it. Decoding cost grows with it, not with the cache size.
    """
    cfg = model.config
    batch = tokens.shape[0]
    length = attention_length or cache.k.shape[3]
    cos, sin = _rotary(model, positions[:, None])
    key_index = jnp.arange(length)[None, :]
    visible = key_index <= positions[:, None]
    if cfg.sliding_window is not None:
        visible &= positions[:, None] - key_index < cfg.sliding_window
    mask = visible[:, None, :]  # [B, 1 query, length]
    rows = jnp.arange(batch)

    def step(layer: DecoderLayer, carry, index: jax.Array):
        x, ck, cv = carry
        q, k, v = layer.self_attn.project(layer.input_layernorm(x), cos, sin)
        ck = ck.at[index, rows, :, positions].set(k[:, 0].astype(ck.dtype), mode="drop")
        cv = cv.at[index, rows, :, positions].set(v[:, 0].astype(cv.dtype), mode="drop")
        read = lambda c: jax.lax.dynamic_index_in_dim(c, index, keepdims=False)[:, :, :length]
        x = x + layer.self_attn.o_proj(cached_attention(q, read(ck), read(cv), mask))
        return (constrain_batch(_mlp_block(layer, x)), ck, cv), None

    x = constrain_batch(model.embed(tokens[:, None]))
    (x, k, v), _ = _run_layers(model, step, (x, cache.k, cache.v))
    return _last_token_logits(model, x, jnp.zeros((batch,), jnp.int32)), KVCache(k, v)
