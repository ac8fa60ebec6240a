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

Every finished shard's size and sha256 are recorded in `shard_checksums` (keyed by the scores file
name) together with `finished_shards`. Training verifies each shard it reads against them
(`check_scores`), and a rerun of the scoring command verifies the finished ones and recomputes any
that are missing or damaged. Metadata written before checksums existed still loads, with a warning
that its shards cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from rho_jax import integrity

FORMAT = "rho_jax.reference_scores"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
SCORE_FIELDS = ("ref_loss", "ref_entropy")
STORAGE_DTYPES = ("float32", "float16")
DIRECTORY_KEY = "_directory"  # set by read_metadata to the directory it read; never written
RERUN = "Rerun the same python -m rho_jax.score command (it verifies finished shards and recomputes damaged ones)."

log = logging.getLogger(__name__)


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
    """Write `metadata` (with this format and version, without `DIRECTORY_KEY`) to the directory's
    metadata.json, atomically and flushed to disk."""
    stored = {key: value for key, value in metadata.items() if key != DIRECTORY_KEY}
    integrity.write_json_atomic(directory / METADATA_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION, **stored})


def read_metadata(directory: Path) -> dict[str, Any]:
    """The metadata of scores directory `directory`, checked to be of this format and version, with
    `DIRECTORY_KEY` set to `directory` so that `check_scores` can verify the shards' files."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {METADATA_FILE}: scores are written by `python -m rho_jax.score`.")
    metadata = json.loads(path.read_text())
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a rho_jax scores directory of format version {FORMAT_VERSION}; "
                         "re-run python -m rho_jax.score.")
    return {**metadata, DIRECTORY_KEY: str(directory)}


def unverifiable_shards(metadata: dict[str, Any], shards: list[str]) -> list[str]:
    """Those of `shards` (rows shard names) whose score shard has no recorded checksum (written by
    a rho_jax.score from before checksums)."""
    recorded = metadata.get("shard_checksums", {})
    return [shard for shard in shards if score_shard_name(shard) not in recorded]


def damaged_shards(directory: Path, metadata: dict[str, Any], shards: list[str]) -> dict[str, str]:
    """`{rows shard: what is wrong}` for each of `shards` whose score shard in `directory` is missing,
    or differs in size or sha256 from its recorded checksum (empty: all intact). Shards without a
    recorded checksum are skipped (`unverifiable_shards`). Hashes on several threads."""
    recorded = metadata.get("shard_checksums", {})
    problems, to_hash = {}, []
    for shard in (s for s in shards if score_shard_name(s) in recorded):
        path, written = Path(directory) / score_shard_name(shard), recorded[score_shard_name(shard)]["bytes"]
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            problems[shard] = "is missing"
        elif size < written:
            problems[shard] = f"is truncated ({size} of {written} bytes)"
        elif size > written:
            problems[shard] = f"has {size} bytes, {written} were written"
        else:
            to_hash.append(shard)
    with ThreadPoolExecutor(integrity.HASH_THREADS) as pool:
        digests = pool.map(lambda shard: integrity.file_sha256(Path(directory) / score_shard_name(shard)), to_hash)
        problems |= {shard: "has other contents than were written (sha256 differs)"
                     for shard, digest in zip(to_hash, digests) if digest != recorded[score_shard_name(shard)]["sha256"]}
    return {shard: problems[shard] for shard in shards if shard in problems}


def check_scores(metadata: dict[str, Any], where: str, prepared_metadata: dict[str, Any], shards: list[str]) -> None:
    """Raise ValueError unless the scores were computed on exactly these packed rows, every one of
    `shards` (rows shard names) is finished, and each of their files has the size and sha256 recorded
    when it was written (the error names every damaged shard and the command that repairs it).
    `metadata` is as `read_metadata` returns it; shards without a recorded checksum are only warned about."""
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
    unverifiable = unverifiable_shards(metadata, shards)
    if unverifiable:
        log.warning("%s: %d of %d score shards (e.g. %s) have no recorded checksum (written by an older rho_jax.score) "
                    "and cannot be verified.", where, len(unverifiable), len(shards), score_shard_name(unverifiable[0]))
    directory = Path(metadata[DIRECTORY_KEY])
    damaged = damaged_shards(directory, metadata, shards)
    if damaged:
        raise ValueError(
            f"{where}: {len(damaged)} score shard(s) are damaged: "
            + "; ".join(f"{directory / score_shard_name(shard)} {problem}" for shard, problem in damaged.items())
            + f". {RERUN}"
        )
