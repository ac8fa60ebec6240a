"""The Pallas GPU flash-attention kernel (`jax.experimental.pallas.ops.gpu.attention.mha`) on packed documents.

Causal attention with segment ids = the document numbers of a `DocumentMask` (tokens attend within
their document); keys/values are repeated over each group of query heads (GQA), so the gradient of a
key/value head sums over its group. The kernel takes no sliding window. Block sizes must divide the
sequence length. `interpret=True` runs the kernel on any backend (tests on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as gpu_attention

from rho_jax.models.attention_kernels.mask import DocumentMask

FORWARD_BLOCK = 128
BACKWARD_BLOCK = 32


def flash_unsupported(seq_len: int, mask: DocumentMask) -> str | None:
    """Why the kernel cannot compute this attention, or None when it can."""
    if mask.sliding_window is not None:
        return f"flash (Pallas GPU mha) has no sliding window (window {mask.sliding_window})"
    if seq_len % min(FORWARD_BLOCK, seq_len) or seq_len % min(BACKWARD_BLOCK, seq_len):
        return f"flash needs a sequence length that is a multiple of {BACKWARD_BLOCK} (or below it), got {seq_len}"
    return None


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: DocumentMask, *, interpret: bool = False) -> jax.Array:
    """Attention of q `[B, T, N, H]` over k, v `[B, T, K, H]` under `mask`; output `[B, T, N, H]`."""
    batch, seq_len, n_heads, head_dim = q.shape
    reason = flash_unsupported(seq_len, mask)
    if reason is not None:
        raise ValueError(reason)
    groups = n_heads // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    segment_ids = None if mask.documents is None else jnp.broadcast_to(mask.documents, (batch, seq_len)).astype(jnp.int32)
    forward, backward = min(FORWARD_BLOCK, seq_len), min(BACKWARD_BLOCK, seq_len)
    blocks = gpu_attention.BlockSizes(block_q=forward, block_k=forward, block_q_dkv=backward, block_kv_dkv=backward,
                                      block_q_dq=backward, block_kv_dq=backward)
    return gpu_attention.mha(q, k, v, segment_ids, sm_scale=head_dim**-0.5, causal=True, block_sizes=blocks,
                             interpret=interpret)
