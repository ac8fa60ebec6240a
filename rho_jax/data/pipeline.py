"""The training stream and the held-out evaluation batches, per process, and their global arrays.

Training: per source, items are shuffled anew every epoch and repeated forever; sources are mixed
by weight at the level of packed rows; rows are batched into model batches
`{"input_ids", "targets", "valid", "segment_ids"}`, each `[batch_rows, seq_len]`. How the work is
split between processes depends on the sources:
- all prepared rows (`python -m rho_jax.data.prepare`): every process sees the same global order of
  rows and reads only its slice of each global batch. The global batches are the same for any
  number of processes, and the position in the stream is just the number of batches taken
  (`positioned_by_step`), so a run can resume on a different number of processes.
- any raw documents: each process tokenizes and packs its own share of the documents (no work is
  repeated), so what a global batch holds depends on the number of processes, and the position is
  per process (the iterator's state, saved in every checkpoint).
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
from rho_jax.data.packing import READ_OPTIONS, Row, source_rows
from rho_jax.data.row_sources import PackedRowSource
from rho_jax.data.scores import SCORE_FIELDS
from rho_jax.data.sources import DocumentSource, open_source, resolve_paths, source_format
from rho_jax.data.tokenizer import check_tokenizer, tokenizer_fingerprint


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count={process_count}), got {process_index}.")


def _open_checked(
    source: SourceConfig, tokenizer: transformers.PreTrainedTokenizerBase, seq_len: int, on_bad_record: str
) -> DocumentSource | PackedRowSource:
    """`open_source(source, on_bad_record)`; prepared rows must have been packed for `seq_len` with `tokenizer`."""
    opened = open_source(source, on_bad_record)
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
    """Model batch of packed rows; precomputed reference scores (already aligned with the targets) pass through."""
    batch = batch_from_tokens(rows["tokens"], rows["segment_ids"], rows["loss_mask"])
    return batch | {key: rows[key] for key in SCORE_FIELDS if key in rows}


def positioned_by_step(cfg: DataConfig) -> bool:
    """True when every source is prepared rows: the training stream's global batches do not depend
    on the number of processes and `train_dataset(..., start_batch=n)` resumes it after n batches."""
    return all(source_format(source, resolve_paths(source)) == "arrayrecord" for source in cfg.sources)


def _prepared_batches(
    sources: list[PackedRowSource], cfg: DataConfig, batch_rows: int, process_index: int, process_count: int
) -> grain.MapDataset:
    """Global batch j is rows `[j*G, (j+1)*G)` of the mixture, `G = batch_rows * process_count`;
    this process's batch j is rows `[process_index*batch_rows, (process_index+1)*batch_rows)` of it."""
    per_source = [training_order(grain.MapDataset.source(source), seed=cfg.seed + i, process_index=0, process_count=1)
                  for i, source in enumerate(sources)]
    rows = per_source[0] if len(per_source) == 1 else grain.MapDataset.mix(per_source, [s.weight for s in cfg.sources])
    # An endless MapDataset has length sys.maxsize, which grain's batch cannot count; 2**62 rows is
    # still more than any run reads.
    return rows[: 2**62].batch(batch_rows)[process_index::process_count].map(_model_batch)


def _document_batches(
    sources: list[DocumentSource | PackedRowSource], cfg: DataConfig, tokenizer: transformers.PreTrainedTokenizerBase,
    batch_rows: int, process_index: int, process_count: int,
) -> grain.IterDataset:
    """Batches packed from this process's share of every source's items."""
    per_source = [
        source_rows(
            source,
            tokenizer,
            cfg.seq_len + 1,
            functools.partial(
                training_order, seed=cfg.seed + i, process_index=process_index, process_count=process_count
            ),
        )
        for i, source in enumerate(sources)
    ]
    rows = per_source[0] if len(per_source) == 1 else grain.IterDataset.mix(per_source, [s.weight for s in cfg.sources])
    return rows.batch(batch_rows).map(_model_batch)


def train_dataset(
    cfg: DataConfig,
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    batch_rows: int,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
) -> grain.IterDataset:
    """The infinite training stream of this process: its share of every global batch.

    Yields `{"input_ids": int32, "targets": int32, "valid": bool, "segment_ids": int32}`, each
    `[batch_rows, cfg.seq_len]`. Deterministic for (cfg, process_index, process_count); its iterator
    supports `get_state()`/`set_state()` for exact resume. `start_batch` skips that many batches
    (only where `positioned_by_step`). Sources are opened and checked here, so missing files,
    unknown formats, bad records (under `cfg.on_bad_record`) and stale prepared data fail before
    training starts.
    """
    _check_process(process_index, process_count)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}.")
    check_tokenizer(tokenizer, tokenizer.name_or_path)
    sources = [_open_checked(source, tokenizer, cfg.seq_len, cfg.on_bad_record) for source in cfg.sources]
    if all(isinstance(source, PackedRowSource) for source in sources):
        prepared_batches = _prepared_batches(sources, cfg, batch_rows, process_index, process_count)
        batches = prepared_batches[start_batch:].to_iter_dataset(READ_OPTIONS)
    elif start_batch:
        raise ValueError("start_batch needs prepared sources only; a stream over raw documents resumes from its "
                         "iterator state.")
    else:
        batches = _document_batches(sources, cfg, tokenizer, batch_rows, process_index, process_count)
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
    on_bad_record: str = "error",
) -> list[dict[str, np.ndarray]]:
    """This process's slices of the held-out set's global batches (same keys and dtypes as training).

    Every process packs the whole set in file order (no shuffle) and keeps the first `max_rows`
    rows (all if None); they are cut into global batches of `global_batch_rows`, the last padded
    with rows that have segment id 0 and no valid target. Process p gets rows `[p*L:(p+1)*L]` of
    each global batch, `L = global_batch_rows // process_count`: every process gets the same number
    of batches and together they hold exactly the set. Bad records are refused or left out as
    `on_bad_record` says (`open_source`; a run passes its `data.on_bad_record`).
    """
    _check_process(process_index, process_count)
    if global_batch_rows < 1 or global_batch_rows % process_count:
        raise ValueError(
            f"global_batch_rows must be a positive multiple of process_count={process_count}, got {global_batch_rows}."
        )
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or null, got {max_rows}.")
    check_tokenizer(tokenizer, tokenizer.name_or_path)
    packed = source_rows(_open_checked(source, tokenizer, seq_len, on_bad_record), tokenizer, seq_len + 1)
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
