"""Packing: documents -> fully packed rows of `row_len = seq_len + 1` tokens with segment ids.

A row is `{"tokens": int32, "segment_ids": int32, "loss_mask": bool}`, each `[row_len]`. Documents
are concatenated in order and cut every `row_len` tokens (grain's ConcatThenSplit): the pieces of a
row have segment ids 1, 2, ...; a long document continues in the next row(s) under a new id there.
Only the last row of a finite stream is padded (segment id 0, loss_mask False). Positions are not
stored: the model derives them from the segment ids. `rho_jax.batch.batch_from_tokens` turns rows
into model batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
import transformers

from rho_jax.data.row_sources import PackedRowSource
from rho_jax.data.sources import DocumentSource
from rho_jax.data.tokenizer import encode_document

Row = dict[str, np.ndarray]
# Items are read and tokenized in the iterating thread; parallelism comes from grain worker processes
# (`num_workers`). grain's prefetch threads would cost O(buffer size) per item on every `next` (grain
# 0.2.18 scans its whole ready buffer), ~3 ms per document at the default buffer of 500.
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _row(packed: dict[str, np.ndarray], extra_fields: tuple[str, ...] = ()) -> Row:
    row = {"tokens": packed["tokens"], "segment_ids": packed["tokens_segment_ids"], "loss_mask": packed["loss_mask"]}
    return row | {name: packed[name] for name in extra_fields}


class _JsonStateIterator(grain.DatasetIterator):
    """Passes a ConcatThenSplit iterator through, restoring states that went through JSON.

    grain.checkpoint stores iterator states as JSON, which turns the packer's `remainder_slices`
    tuples into lists; grain 0.2.18 compares them with the tuple `(-1, -1)` ("no remainder") and a
    restored list would resume wrongly. `set_state` turns them back into tuples.
    """

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        slices = {key: tuple(value) for key, value in state["remainder_slices"].items()}
        self._parent.set_state({**state, "remainder_slices": slices})


class _JsonStateIterDataset(grain.IterDataset):
    def __iter__(self) -> grain.DatasetIterator:
        return _JsonStateIterator(self._parent.__iter__())


def pack_documents(ds: grain.IterDataset, row_len: int, extra_fields: tuple[str, ...] = ()) -> grain.IterDataset:
    """Rows of `row_len` tokens packed from `{"tokens", "loss_mask"}` documents (see the module docstring).

    `extra_fields` name further per-token arrays of the documents (e.g. token labels) that are
    packed alongside the tokens and kept in the rows (padding 0).
    """
    length_struct = {name: row_len for name in ("tokens", "loss_mask", *extra_fields)}
    packed = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=length_struct)
    return _JsonStateIterDataset(packed).map(functools.partial(_row, extra_fields=extra_fields))


def _encode(tokenizer: transformers.PreTrainedTokenizerBase, document: dict) -> dict[str, np.ndarray]:
    return encode_document(tokenizer, document["text"], document["prompt"])


def source_rows(
    source: DocumentSource | PackedRowSource,
    tokenizer: transformers.PreTrainedTokenizerBase,
    row_len: int,
    order: Callable[[grain.MapDataset], grain.MapDataset] = lambda ds: ds,
) -> grain.IterDataset:
    """Packed rows of `source`, in the order `order` gives its items (default: file order).

    Documents are ordered, tokenized with `encode_document` and packed; prepared rows are only
    ordered (they are packed already). `order` may shuffle, repeat or take a share of the items.
    """
    items = order(grain.MapDataset.source(source))
    if isinstance(source, PackedRowSource):
        return items.to_iter_dataset(READ_OPTIONS)
    return pack_documents(items.map(functools.partial(_encode, tokenizer)).to_iter_dataset(READ_OPTIONS), row_len)
