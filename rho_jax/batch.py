"""Training batches from packed token rows: inputs, next-token targets and the validity mask."""

from __future__ import annotations

import numpy as np

# The arrays of a packed training batch, as `batch_from_tokens` returns them with segment ids.
BATCH_KEYS = ("input_ids", "targets", "valid", "segment_ids")


def batch_from_tokens(
    tokens: np.ndarray, segment_ids: np.ndarray | None = None, loss_mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Turn rows of `T + 1` tokens into a `[B, T]` batch.

    input_ids = tokens[:, :-1], targets = tokens[:, 1:]. A target is valid iff it lies in the same
    document as its input (equal segment id), is not padding (segment id 0), and `loss_mask` (e.g.
    false on prompt tokens) allows it. Without `segment_ids` the whole row is one document.
    """
    tokens = np.asarray(tokens)
    batch = {"input_ids": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}
    valid = np.ones(batch["targets"].shape, bool)
    if segment_ids is not None:
        segment_ids = np.asarray(segment_ids)
        valid &= (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
        batch["segment_ids"] = segment_ids[:, :-1].astype(np.int32)
    if loss_mask is not None:
        valid &= np.asarray(loss_mask, bool)[:, 1:]
    batch["valid"] = valid
    return batch
