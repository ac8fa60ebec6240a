"""Which tokens SLM selects: the noisy corpus's labelled noise vs its clean in-domain text.

A probe is a few training-sized batches of the noisy corpus, packed exactly like training data,
with a label for every target token: 0 clean (in-domain text), 1 injected web noise, 2 off-domain
document (from the corpus's `noise` spans). At any checkpoint, `selection_counts` runs the SLM
selection a training step would make on each batch and counts the kept tokens per label.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import grain
import numpy as np
import transformers
from flax import nnx

from rho_jax.batch import batch_from_tokens
from rho_jax.data.packing import pack_documents
from rho_jax.data.tokenizer import encode_document
from rho_jax.quickstart.corpus import NOISE_KINDS

LABELS = ("clean", *NOISE_KINDS)


def labelled_document(tokenizer: transformers.PreTrainedTokenizerBase, record: dict) -> dict[str, np.ndarray]:
    """`encode_document` of `record["text"]` plus `labels` int32 per token.

    A token takes the label of the span holding its last character (byte-level tokens often start
    with the newline before a noise line); added special tokens take the label of the token before.
    """
    encoded = encode_document(tokenizer, record["text"])
    offsets = tokenizer(record["text"], add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    char_labels = np.zeros(len(record["text"]) + 1, np.int32)
    for start, end, kind in record.get("noise", []):
        char_labels[start:end] = LABELS.index(kind)
    labels = np.zeros(len(encoded["tokens"]), np.int32)
    for i in range(len(labels)):
        start, end = offsets[i] if i < len(offsets) else (0, 0)
        labels[i] = char_labels[end - 1] if end > start else (labels[i - 1] if i else 0)
    return encoded | {"labels": labels}


def probe_batches(
    path: str | Path, tokenizer: transformers.PreTrainedTokenizerBase, *, seq_len: int, batch_rows: int, num_batches: int
) -> list[dict[str, np.ndarray]]:
    """`num_batches` model batches `[batch_rows, seq_len]` of the JSONL corpus at `path` (file order),
    each with `labels` of its targets (the label of `targets[b, t]`)."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    documents = grain.MapDataset.source(records).map(lambda r: labelled_document(tokenizer, r)).to_iter_dataset()
    rows = list(itertools.islice(pack_documents(documents, seq_len + 1, extra_fields=("labels",)), batch_rows * num_batches))
    if len(rows) < batch_rows * num_batches:
        raise ValueError(f"{path} packs into {len(rows)} rows of {seq_len + 1} tokens; "
                         f"the probe needs {batch_rows * num_batches}.")
    batches = []
    for start in range(0, len(rows), batch_rows):
        chunk = {key: np.stack([row[key] for row in rows[start : start + batch_rows]]) for key in rows[0]}
        batch = batch_from_tokens(chunk["tokens"], chunk["segment_ids"], chunk["loss_mask"])
        batches.append(batch | {"labels": chunk["labels"][:, 1:]})
    return batches


def selection_counts(scorer, params: nnx.State, ref_params: nnx.State,
                     batches: list[dict[str, np.ndarray]]) -> dict[str, dict[str, int]]:
    """{label: {"tokens": valid targets with that label, "selected": how many of them SLM keeps}}.

    `scorer` is `rho_jax.analysis.token_scores.build_token_scorer(...)`; each batch is selected on its own,
    as one training batch.
    """
    counts = {label: {"tokens": 0, "selected": 0} for label in LABELS}
    for batch in batches:
        model_batch = {key: value for key, value in batch.items() if key != "labels"}
        selected = np.asarray(scorer(params, ref_params, model_batch)["selected"])
        for index, label in enumerate(LABELS):
            where = batch["valid"] & (batch["labels"] == index)
            counts[label]["tokens"] += int(where.sum())
            counts[label]["selected"] += int((selected & where).sum())
    return counts
