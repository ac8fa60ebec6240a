"""The structure of a causal self-attention mask over packed documents, for kernels that never build it.

Key j is visible to query i (both token indices along the row) iff

    j <= i  and  documents[b, i] == documents[b, j]  and  (sliding_window is None or i - j < sliding_window)

`documents [B|1, T]` holds a document number per token (`rho_jax.models.llama.document_index`), or is
None when every row is one document. Every query sees at least itself, so no softmax row is empty.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DocumentMask:
    """Causal mask restricted to documents and (optionally) a sliding window; a pytree whose only
    leaf is `documents` (the window is static)."""

    documents: jax.Array | None
    sliding_window: int | None = dataclasses.field(default=None, metadata={"static": True})

    def __post_init__(self) -> None:
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be None or >= 1, got {self.sliding_window}.")
        if self.documents is not None and getattr(self.documents, "ndim", 2) != 2:
            raise ValueError(f"documents must have shape [batch|1, seq], got {self.documents.shape}.")

    def dense(self, seq_len: int) -> jax.Array:
        """The boolean mask `[B|1, 1, T, T]` (True = visible) of the formula above."""
        i = jnp.arange(seq_len)[:, None]
        j = jnp.arange(seq_len)[None, :]
        visible = j <= i
        if self.sliding_window is not None:
            visible &= i - j < self.sliding_window
        visible = visible[None, None]
        if self.documents is not None:
            docs = self.documents
            visible = visible & (docs[:, None, :, None] == docs[:, None, None, :])
        return visible
