"""On-disk format of precomputed reference scores, aligned with a prepared-rows directory.

Written by `python -m rho_jax.score` into one directory per (reference model, prepared directory):
  scores-00000.array_record, ...  one record per packed row of `rows-00000.array_record`, same order
  metadata.json                   what was scored, with what, and which shards are finished

Record layout: the raw little-endian bytes of one `[2, seq_len]` array of the storage dtype
(float32 or float16): row 0 is the reference's cross-entropy `ref_loss` of each target of the row
(`targets = tokens[1:]`), row 1 the entropy `ref_entropy` of its predictive distribution. Padding
and cross-document positions hold whatever the model computed; training never selects them.

The scores belong to exactly one packing: `packing_fingerprint` hashes the prepared directory's
metadata (tokenizer fingerprint, seq_len, row and token counts, shards, source), and training
refuses scores whose fingerprint, tokenizer or seq_len differ from the rows it reads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "rho_jax.reference_scores"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
SCORE_FIELDS = ("ref_loss", "ref_entropy")
STORAGE_DTYPES = ("float32", "float16")


def packing_fingerprint(prepared_metadata: dict[str, Any]) -> str:
    """sha256 of the prepared directory's metadata (canonical JSON): changes with the tokenizer,
    seq_len, the rows written and the source they were packed from."""
    return hashlib.sha256(json.dumps(prepared_metadata, sort_keys=True).encode()).hexdigest()[:16]


def score_shard_name(rows_shard: str) -> str:
    """`rows-00003.array_record` -> `scores-00003.array_record`."""
    if not rows_shard.startswith("rows-"):
        raise ValueError(f"{rows_shard} is not a prepared rows shard (rows-NNNNN.array_record).")
    return "scores" + rows_shard[len("rows"):]


def scores_to_record(ref_loss: np.ndarray, ref_entropy: np.ndarray, dtype: str) -> bytes:
    """One row's `[seq_len]` scores as record bytes."""
    return np.stack([ref_loss, ref_entropy]).astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def record_to_scores(record: bytes, seq_len: int, dtype: str) -> dict[str, np.ndarray]:
    """Inverse of `scores_to_record`: `{"ref_loss", "ref_entropy"}`, float32 `[seq_len]` each."""
    stored = np.dtype(dtype).newbyteorder("<")
    if len(record) != len(SCORE_FIELDS) * seq_len * stored.itemsize:
        raise ValueError(f"a score record has {len(record)} bytes, expected "
                         f"{len(SCORE_FIELDS) * seq_len * stored.itemsize}; the shard does not match its metadata.json.")
    values = np.frombuffer(record, stored).reshape(len(SCORE_FIELDS), seq_len).astype(np.float32)
    return dict(zip(SCORE_FIELDS, values))


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    path = directory / METADATA_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}, indent=2) + "\n")
    tmp.replace(path)


def read_metadata(directory: Path) -> dict[str, Any]:
    """The metadata of scores directory `directory`, checked to be of this format and version."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {METADATA_FILE}: scores are written by `python -m rho_jax.score`.")
    metadata = json.loads(path.read_text())
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a rho_jax scores directory of format version {FORMAT_VERSION}; "
                         "re-run python -m rho_jax.score.")
    return metadata


def check_scores(metadata: dict[str, Any], where: str, prepared_metadata: dict[str, Any], shards: list[str]) -> None:
    """Raise ValueError unless the scores were computed on exactly these packed rows and every one
    of `shards` (rows shard names) is finished."""
    if metadata["tokenizer_fingerprint"] != prepared_metadata["tokenizer_fingerprint"]:
        raise ValueError(
            f"{where}: the scores were computed on rows tokenized with another tokenizer (fingerprint "
            f"{metadata['tokenizer_fingerprint']}, the rows have {prepared_metadata['tokenizer_fingerprint']}). "
            "Re-run python -m rho_jax.score on these rows."
        )
    if metadata["seq_len"] != prepared_metadata["seq_len"]:
        raise ValueError(
            f"{where}: the scores are for seq_len {metadata['seq_len']}, the rows for seq_len "
            f"{prepared_metadata['seq_len']}. Re-run python -m rho_jax.score on these rows."
        )
    if metadata["packing_fingerprint"] != packing_fingerprint(prepared_metadata):
        raise ValueError(
            f"{where}: the scores were computed for other packed rows (packing fingerprint "
            f"{metadata['packing_fingerprint']}, these rows have {packing_fingerprint(prepared_metadata)}): the "
            "prepared directory was re-created or is another one. Re-run python -m rho_jax.score on these rows."
        )
    missing = [s for s in shards if s not in metadata["finished_shards"]]
    if missing:
        raise ValueError(
            f"{where}: {len(missing)} shard(s) have no scores yet (e.g. {missing[0]}); the scoring run did not "
            "finish. Rerun the same python -m rho_jax.score command to complete it."
        )
