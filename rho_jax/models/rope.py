"""Rotary position embeddings in the Hugging Face Llama convention (rotate-half, not interleaved)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rho_jax.models.config import RopeParameters


def inverse_frequencies(rope: RopeParameters, head_dim: int) -> np.ndarray:
    """Per-pair rotation frequencies `[head_dim // 2]` in float32, computed exactly as transformers does.

    default: inv_freq[i] = 1 / theta ** (2i / head_dim); `linear` divides by `factor`;
    `llama3` divides wavelengths longer than `original_max_position_embeddings / low_freq_factor` by
    `factor`, keeps those shorter than `original_max_position_embeddings / high_freq_factor`, and
    interpolates in between with smooth = (orig / wavelen - low) / (high - low).
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(rope.rope_theta) ** exponents)).astype(np.float32)
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32)
    if rope.rope_type == "llama3":
        factor = np.float32(rope.factor)
        old_context = rope.original_max_position_embeddings
        low, high = rope.low_freq_factor, rope.high_freq_factor
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rotary_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables `[batch, seq, 1, head_dim]` (float32) for integer `positions [batch, seq]`."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin for `x [batch, seq, heads, head_dim]`, in float32, cast back."""
    xf = x.astype(jnp.float32)
    first, second = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)
