"""The training stream and the held-out evaluation batches, per process, and their global arrays.

Training: per source, items are shuffled anew every epoch, repeated forever and split into
disjoint per-process shares; documents are tokenized and packed (prepared rows are used as they
are); sources are mixed by weight at the level of packed rows; rows are batched into model batches
`{"input_ids", "targets", "valid", "segment_ids"}`, each `[batch_rows, seq_len]`.
"""

from __future__ import annotations

import functools
import itertools

import absl.flags
import grain
import jax
import numpy as np
import transformers

from rho_jax.batch import batch_from_tokens
from rho_jax.data import prepared
from rho_jax.data.config import DataConfig, SourceConfig
from rho_jax.data.packing import Row, source_rows
from rho_jax.data.sources import DocumentSource, PackedRowSource, open_source
from rho_jax.data.tokenizer import check_tokenizer, tokenizer_fingerprint


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count={process_count}), got {process_index}.")


def _open_checked(
    source: SourceConfig, tokenizer: transformers.PreTrainedTokenizerBase, seq_len: int
) -> DocumentSource | PackedRowSource:
    """`open_source(source)`; prepared rows must have been packed for `seq_len` with `tokenizer`."""
    opened = open_source(source)
    if isinstance(opened, PackedRowSource):
        prepared.check_metadata(
            opened.metadata, f"source {source.name!r}", seq_len=seq_len, fingerprint=tokenizer_fingerprint(tokenizer)
        )
    return opened


def training_order(ds: grain.MapDataset, *, seed: int, process_index: int, process_count: int) -> grain.MapDataset:
    """`ds` shuffled with `seed` (a new order every epoch), repeated forever, then this process's share.

    Shares are interleaved (`[process_index::process_count]`): disjoint across processes and
    together covering every item of every epoch.
    """
    return ds.seed(seed).shuffle().repeat()[process_index::process_count]


def _model_batch(rows: Row) -> dict[str, np.ndarray]:
    return batch_from_tokens(rows["tokens"], rows["segment_ids"], rows["loss_mask"])


def train_dataset(
    cfg: DataConfig,
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    batch_rows: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """The infinite training stream of this process: its share of every global batch.

    Yields `{"input_ids": int32, "targets": int32, "valid": bool, "segment_ids": int32}`, each
    `[batch_rows, cfg.seq_len]`. Deterministic for (cfg, process_index, process_count); its iterator
    supports `get_state()`/`set_state()` for exact resume. Sources are opened and checked here, so
    missing files, unknown formats and stale prepared data fail before training starts.
    """
    _check_process(process_index, process_count)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}.")
    check_tokenizer(tokenizer, tokenizer.name_or_path)
    per_source = [
        source_rows(
            _open_checked(source, tokenizer, cfg.seq_len),
            tokenizer,
            cfg.seq_len + 1,
            functools.partial(
                training_order, seed=cfg.seed + i, process_index=process_index, process_count=process_count
            ),
        )
        for i, source in enumerate(cfg.sources)
    ]
    rows = per_source[0] if len(per_source) == 1 else grain.IterDataset.mix(per_source, [s.weight for s in cfg.sources])
    batches = rows.batch(batch_rows).map(_model_batch)
    if cfg.num_workers > 0:
        # grain workers read absl flags, which raise unless parsed; rho_jax does not use absl's parser.
        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
    return batches


def eval_batches(
    source: SourceConfig,
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    seq_len: int,
    global_batch_rows: int,
    max_rows: int | None,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """This process's slices of the held-out set's global batches (same keys and dtypes as training).

    Every process packs the whole set in file order (no shuffle) and keeps the first `max_rows`
    rows (all if None); they are cut into global batches of `global_batch_rows`, the last padded
    with rows that have segment id 0 and no valid target. Process p gets rows `[p*L:(p+1)*L]` of
    each global batch, `L = global_batch_rows // process_count`: every process gets the same number
    of batches and together they hold exactly the set.
    """
    _check_process(process_index, process_count)
    if global_batch_rows < 1 or global_batch_rows % process_count:
        raise ValueError(
            f"global_batch_rows must be a positive multiple of process_count={process_count}, got {global_batch_rows}."
        )
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or null, got {max_rows}.")
    check_tokenizer(tokenizer, tokenizer.name_or_path)
    packed = source_rows(_open_checked(source, tokenizer, seq_len), tokenizer, seq_len + 1)
    rows = list(itertools.islice(packed, max_rows))
    padding = -len(rows) % global_batch_rows
    table = {}
    for key in prepared.ROW_FIELDS:
        column = np.stack([row[key] for row in rows])
        table[key] = np.concatenate([column, np.zeros((padding, seq_len + 1), column.dtype)])
    local = global_batch_rows // process_count
    starts = range(process_index * local, len(rows) + padding, global_batch_rows)
    return [_model_batch({key: column[start : start + local] for key, column in table.items()}) for start in starts]


def to_global_batch(local: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Global arrays from every process's local batch (its rows, in process order along axis 0)."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local.items()}
