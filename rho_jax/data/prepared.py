"""On-disk format of prepared data: packed rows in ArrayRecord shards plus `metadata.json`.

Written by `python -m rho_jax.data.prepare` into one directory:
  rows-00000.array_record, rows-00001.array_record, ...  one record per packed row
  metadata.json                                         what the rows were made from and how

Record layout: the raw little-endian bytes of one int32 array of shape `[3, row_len]` whose rows
are `tokens`, `segment_ids` and `loss_mask` (0/1) of one packed row (`row_len = seq_len + 1`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "rho_jax.packed_rows"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
ROW_FIELDS = ("tokens", "segment_ids", "loss_mask")
_RECORD_DTYPE = np.dtype("<i4")


def shard_name(index: int) -> str:
    """File name of shard `index`."""
    return f"rows-{index:05d}.array_record"


def row_to_record(row: dict[str, np.ndarray]) -> bytes:
    """One packed row (`ROW_FIELDS` -> `[row_len]` arrays) as record bytes."""
    return np.stack([np.asarray(row[name], _RECORD_DTYPE) for name in ROW_FIELDS]).tobytes()


def record_to_row(record: bytes, row_len: int) -> dict[str, np.ndarray]:
    """Inverse of `row_to_record`: tokens and segment_ids int32, loss_mask bool, each `[row_len]`."""
    if len(record) != len(ROW_FIELDS) * row_len * _RECORD_DTYPE.itemsize:
        raise ValueError(
            f"a prepared record has {len(record)} bytes, expected {len(ROW_FIELDS) * row_len * _RECORD_DTYPE.itemsize} "
            f"for row_len {row_len}; the shard does not match its metadata.json. Re-run rho_jax.data.prepare."
        )
    tokens, segment_ids, loss_mask = np.frombuffer(record, _RECORD_DTYPE).reshape(len(ROW_FIELDS), row_len)
    return {"tokens": tokens.astype(np.int32), "segment_ids": segment_ids.astype(np.int32), "loss_mask": loss_mask != 0}


def write_metadata(directory: Path, **fields: Any) -> None:
    """Write `metadata.json` with the format name, version and record layout plus `fields`."""
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "record_layout": {"dtype": _RECORD_DTYPE.str, "shape": ["fields", "row_len"], "fields": list(ROW_FIELDS)},
        **fields,
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(directory: Path) -> dict[str, Any]:
    """The metadata of the prepared directory `directory`, checked to be of this format and version."""
    path = directory / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {METADATA_FILE}: arrayrecord sources must be written by "
            "`python -m rho_jax.data.prepare`."
        )
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run rho_jax.data.prepare.") from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by rho_jax.data.prepare (format is not {FORMAT!r}).")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {metadata.get('format_version')}, this rho_jax reads version {FORMAT_VERSION}; "
            "re-run rho_jax.data.prepare."
        )
    return metadata


def check_metadata(metadata: dict[str, Any], where: str, *, seq_len: int, fingerprint: str) -> None:
    """Raise ValueError unless rows described by `metadata` were packed for `seq_len` with this tokenizer."""
    if metadata["seq_len"] != seq_len:
        raise ValueError(
            f"{where}: prepared rows have seq_len {metadata['seq_len']}, but data.seq_len is {seq_len}. "
            f"Re-run rho_jax.data.prepare with --seq_len {seq_len} (or set data.seq_len to {metadata['seq_len']})."
        )
    if metadata["tokenizer_fingerprint"] != fingerprint:
        raise ValueError(
            f"{where}: prepared rows were tokenized with another tokenizer (fingerprint "
            f"{metadata['tokenizer_fingerprint']}, data.tokenizer has {fingerprint}). "
            "Re-run rho_jax.data.prepare with this --tokenizer."
        )
