"""Masked grouped-query attention, and the choice of kernel that computes it.

For queries q `[B, T, N, H]`, keys and values k, v `[B, S, K, H]` with N = K * G (each group of G
query heads shares one key/value head) and a mask (visible = True):

    out[b, t, n] = sum_s softmax_s(q[b, t, n] . k[b, s, n // G] / sqrt(H), masked)[s] * v[b, s, n // G]

The mask is either a dense boolean array `[B|1, 1, T, S]` or a `DocumentMask` (causal self-attention
within packed documents, optional sliding window), the structure the fused kernels need.

Implementations (`ModelOptions.attention`):
    grouped    this module's XLA formulation in head-major layout `[B, K, G, T, H]`: fp32 logits and
               softmax, like `jax.nn.dot_product_attention`'s XLA path, but laid out so XLA:CPU runs
               the forward and especially the backward pass without large transposes;
    xla        `jax.nn.dot_product_attention(implementation="xla")`;
    cudnn      the fused cuDNN kernel (NVIDIA GPUs, bf16/fp16);
    blockwise  online softmax over key/value blocks in XLA, memory linear in T (any backend;
               `attention_kernels.blockwise`);
    flash      the Pallas GPU kernel (`attention_kernels.flash`; no sliding window);
    splash     the Pallas TPU kernel (`attention_kernels.splash`; T a multiple of 128);
    auto       by backend (`choose_implementation`): TPU splash, GPU flash, each falling back to
               blockwise with a logged reason when the kernel cannot take the shape or mask; CPU
               grouped up to `CPU_BLOCKWISE_MIN_SEQ` - 1 tokens, blockwise from there (measured:
               docs/benchmarks.md). With a dense mask, auto is grouped on CPU and
               `jax.nn.dot_product_attention`'s own choice elsewhere.
blockwise/flash/splash need a `DocumentMask`; flash and splash run in Pallas interpret mode off
their own backend (GPU, TPU), which is how they are tested on CPU.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rho_jax.models.attention_kernels.blockwise import blockwise_attention
from rho_jax.models.attention_kernels.flash import flash_attention, flash_unsupported
from rho_jax.models.attention_kernels.mask import DocumentMask
from rho_jax.models.attention_kernels.splash import splash_attention, splash_unsupported
from rho_jax.sharding import BATCH_AXES

ATTENTION_IMPLEMENTATIONS = ("auto", "grouped", "xla", "cudnn", "blockwise", "flash", "splash")
STRUCTURED_IMPLEMENTATIONS = ("blockwise", "flash", "splash")  # need a DocumentMask
CPU_BLOCKWISE_MIN_SEQ = 512  # auto on CPU: blockwise from this sequence length on, grouped below (measured)

logger = logging.getLogger(__name__)


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """The formula above in head-major layout with a dense mask; returns `[B, T, N, H]` in the dtype of `v`."""
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


def choose_implementation(implementation: str, backend: str, seq_len: int, mask: DocumentMask) -> tuple[str, str | None]:
    """The implementation `attend` runs for `implementation` on `backend` (a `jax.default_backend()`
    name) with a `DocumentMask` over `seq_len` tokens, and why auto did not take the backend's fused
    kernel (None when it did, or when nothing was chosen)."""
    if implementation != "auto":
        return implementation, None
    if backend == "tpu":
        reason = splash_unsupported(seq_len)
        return ("blockwise", reason) if reason else ("splash", None)
    if backend == "gpu":
        reason = flash_unsupported(seq_len, mask)
        return ("blockwise", reason) if reason else ("flash", None)
    return ("blockwise", None) if seq_len >= CPU_BLOCKWISE_MIN_SEQ else ("grouped", None)


@functools.cache
def _log_fallback(backend: str, reason: str) -> None:
    logger.warning("attention auto on %s: using blockwise, because %s", backend, reason)


def _rows_per_device(kernel: Callable, q: jax.Array, k: jax.Array, v: jax.Array, mask: DocumentMask) -> jax.Array:
    """`kernel(q, k, v, mask)` on each device's rows: a Pallas kernel is one custom call that XLA cannot
    partition, so under a rho_jax mesh (`jax.set_mesh`) whose batch shards divide the batch it runs in
    `jax.shard_map` over the batch axes (`data`, `fsdp`), heads and sequence whole on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names) or q.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES):
        return kernel(q, k, v, mask)
    rows = jax.sharding.PartitionSpec(BATCH_AXES)
    if mask.documents is None:
        documents_spec = None
    else:  # per-row documents split like the rows; one row of documents for all rows goes whole to every device
        documents_spec = rows if mask.documents.shape[0] == q.shape[0] else jax.sharding.PartitionSpec()
    mask_spec = DocumentMask(documents_spec, mask.sliding_window)
    return jax.shard_map(kernel, in_specs=(rows, rows, rows, mask_spec), out_specs=rows, check_vma=False)(q, k, v, mask)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | DocumentMask, implementation: str) -> jax.Array:
    """Attention with the named implementation (one of `ATTENTION_IMPLEMENTATIONS`); see the module docstring."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}.")
    backend = jax.default_backend()
    seq_len = q.shape[1]
    if isinstance(mask, DocumentMask):
        implementation, reason = choose_implementation(implementation, backend, seq_len, mask)
        if reason is not None:
            _log_fallback(backend, reason)
        if implementation == "blockwise":
            return blockwise_attention(q, k, v, mask)
        if implementation == "flash":
            return _rows_per_device(functools.partial(flash_attention, interpret=backend != "gpu"), q, k, v, mask)
        if implementation == "splash":
            return _rows_per_device(functools.partial(splash_attention, interpret=backend != "tpu"), q, k, v, mask)
        mask = mask.dense(seq_len)
    elif implementation in STRUCTURED_IMPLEMENTATIONS:
        raise ValueError(f"attention {implementation!r} needs a DocumentMask (causal, documents, window), "
                         f"not a dense mask of shape {mask.shape}.")
    if implementation == "grouped" or (implementation == "auto" and backend == "cpu"):
        return grouped_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=None if implementation == "auto" else implementation)
