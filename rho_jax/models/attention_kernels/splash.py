"""The Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`) on packed documents.

The static mask is causal (`CausalMask`), or with Mistral's sliding window w the local mask of
w - 1 keys to the left and none to the right (`LocalMask`, causal by construction); the document
numbers of a `DocumentMask` are the segment ids of queries and keys. GQA uses the MQA form of the
kernel: each key/value head serves its G query heads, vmapped over batch and key/value heads.
The kernel does not scale logits, so queries are scaled by 1/sqrt(H) first. Blocks are
`BLOCK` = 128 tokens, so the sequence length must be a multiple of 128. `interpret=True` runs the
kernel on any backend (tests on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from rho_jax.models.attention_kernels.mask import DocumentMask

BLOCK = 128


def splash_unsupported(seq_len: int) -> str | None:
    """Why the kernel cannot compute attention over `seq_len` tokens, or None when it can."""
    if seq_len % BLOCK:
        return f"splash needs a sequence length that is a multiple of {BLOCK}, got {seq_len}"
    return None


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: DocumentMask, *, interpret: bool = False) -> jax.Array:
    """Attention of q `[B, T, N, H]` over k, v `[B, T, K, H]` under `mask`; output `[B, T, N, H]`."""
    batch, seq_len, n_heads, head_dim = q.shape
    reason = splash_unsupported(seq_len)
    if reason is not None:
        raise ValueError(reason)
    kv_heads = k.shape[2]
    groups = n_heads // kv_heads
    shape = (seq_len, seq_len)
    head_mask = (splash_mask.CausalMask(shape) if mask.sliding_window is None
                 else splash_mask.LocalMask(shape, window_size=(mask.sliding_window - 1, 0), offset=0))
    blocks = splash.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
                               block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK, block_kv_dq=BLOCK)
    kernel = splash.make_splash_mqa_single_device(splash_mask.MultiHeadMask([head_mask] * groups), block_sizes=blocks,
                                                  interpret=interpret)
    qh = (q * jnp.asarray(head_dim**-0.5, q.dtype)).reshape(batch, seq_len, kv_heads, groups, head_dim)
    qh = qh.transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]
    documents = jnp.zeros((1, seq_len), jnp.int32) if mask.documents is None else mask.documents.astype(jnp.int32)
    documents = jnp.broadcast_to(documents, (batch, seq_len))

    def one_row(q_row, k_row, v_row, docs):
        segments = splash.SegmentIds(q=docs, kv=docs)
        return jax.vmap(lambda qg, kg, vg: kernel(qg, kg, vg, segment_ids=segments))(q_row, k_row, v_row)

    out = jax.vmap(one_row)(qh, kh, vh, documents)  # [B, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, seq_len, n_heads, head_dim)
