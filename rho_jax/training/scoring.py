"""The scoring run behind `python -m rho_jax.score`: the reference's per-token `ref_loss` and
`ref_entropy` of every packed row of a prepared directory, written beside it (`rho_jax.data.scores`),
global batches sharded over every device of every process, one shard at a time, written
atomically with its size and sha256 in the metadata, so a rerun verifies the finished shards,
recomputes any that are missing or damaged, and continues with the first unfinished shard."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from rho_jax.batch import batch_from_tokens
from rho_jax.data import prepared, scores, to_global_batch
from rho_jax.data.row_sources import PackedRowSource
from rho_jax.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from rho_jax.integrity import file_entry
from rho_jax.sharding import BATCH_AXES, MeshConfig, batch_sharding, make_mesh
from rho_jax.slm import token_losses_on_mesh
from rho_jax.training.cluster import barrier, is_primary
from rho_jax.training.config import ConfigError, ModelSource
from rho_jax.training.model_sources import load_params, model_graph, read_model_config, tokenizer_dir
from rho_jax.training.schema import to_data

log = logging.getLogger("rho_jax.score")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """reference: the reference model (hf or checkpoint); rows: a prepared directory; output: the
    scores directory to write (new, or an unfinished run of this same config); batch_size: rows per
    global batch; dtype: storage dtype of the scores (float32 keeps them exactly as computed,
    float16 halves the size); ce_chunk_size: sequence positions per cross-entropy chunk."""

    reference: ModelSource
    rows: str
    output: str
    batch_size: int = 32
    dtype: str = "float32"
    mesh: MeshConfig = MeshConfig()
    ce_chunk_size: int | None = 512

    def __post_init__(self) -> None:
        if self.reference.init not in ("hf", "checkpoint"):
            raise ValueError(f"reference.init must be hf or checkpoint (a trained model), got {self.reference.init!r}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}.")
        if self.dtype not in scores.STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {scores.STORAGE_DTYPES}, got {self.dtype!r}.")
        if self.ce_chunk_size is not None and self.ce_chunk_size < 1:
            raise ValueError(f"ce_chunk_size must be a positive integer or null, got {self.ce_chunk_size}.")


def _check_tokenizer(cfg: ScoreConfig, rows_metadata: dict[str, Any]) -> None:
    directory = tokenizer_dir(cfg.reference)
    if directory is None:
        log.warning("reference %s carries no tokenizer files; cannot verify it matches the rows' tokenizer.",
                    cfg.reference.path)
    elif tokenizer_fingerprint(load_tokenizer(str(directory))) != rows_metadata["tokenizer_fingerprint"]:
        raise ConfigError(f"the reference's tokenizer ({directory}) differs from the one the rows in {cfg.rows} were "
                          f"prepared with ({rows_metadata['tokenizer']}); scores would be meaningless.")


def _run_metadata(cfg: ScoreConfig, rows_metadata: dict[str, Any]) -> dict[str, Any]:
    """What identifies this scoring run (an existing output must match it to be continued)."""
    return {
        "reference": to_data(cfg.reference),
        "rows": str(Path(cfg.rows).absolute()),
        "dtype": cfg.dtype,
        "seq_len": rows_metadata["seq_len"],
        "tokenizer_fingerprint": rows_metadata["tokenizer_fingerprint"],
        "packing_fingerprint": scores.packing_fingerprint(rows_metadata),
        "num_rows": rows_metadata["num_rows"],
        "shards": rows_metadata["shards"],
    }


def _open_output(cfg: ScoreConfig, run: dict[str, Any]) -> dict[str, Any]:
    """The output's metadata: fresh for a new directory, the stored one for a run to continue (its
    finished shards verified by `_drop_damaged`)."""
    output = Path(cfg.output)
    if output.is_dir() and (output / scores.METADATA_FILE).is_file():
        stored = scores.read_metadata(output)
        differing = sorted(k for k in run if stored.get(k) != run[k] and k != "rows")
        if differing:
            raise ConfigError(f"output {output} holds scores of another run (different {', '.join(differing)}); "
                              "use a new output directory.")
        return _drop_damaged(output, stored)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"output {output} exists and is not an unfinished rho_jax.score output; choose a new one.")
    return {**run, "finished_shards": [], "shard_checksums": {}, "complete": False}


def _drop_damaged(output: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """`stored` with every finished shard whose file is missing or differs from its recorded checksum
    taken off `finished_shards` (warning with their names), so that this run recomputes it. Shards
    finished by an older rho_jax.score have no checksum: they are kept, with a warning."""
    checksums = stored.setdefault("shard_checksums", {})
    finished = stored["finished_shards"]
    unverifiable = scores.unverifiable_shards(stored, finished)
    if unverifiable:
        log.warning("%s: %d finished shards (e.g. %s) have no recorded checksum (written by an older rho_jax.score); "
                    "they are kept unverified.", output, len(unverifiable), scores.score_shard_name(unverifiable[0]))
    damaged = scores.damaged_shards(output, stored, finished)
    if damaged:
        log.warning("%s: %d finished shard(s) are damaged and will be recomputed: %s", output, len(damaged),
                    "; ".join(f"{scores.score_shard_name(shard)} {problem}" for shard, problem in damaged.items()))
        stored["finished_shards"] = [shard for shard in finished if shard not in damaged]
        for shard in damaged:
            del checksums[scores.score_shard_name(shard)]
        stored["complete"] = False
    return stored


def build_reference_scorer(graphdef: nnx.GraphDef, mesh: Mesh, chunk: int | None) -> Callable:
    """Jitted `(params, batch) -> (ref_loss, ref_entropy)`, float32 `[B, T]`, replicated on every device."""
    return token_losses_on_mesh(graphdef, mesh, chunk_size=chunk, with_entropy=True)


def _local_rows(source: PackedRowSource, start: int, global_rows: int) -> dict[str, np.ndarray]:
    """This process's rows `[start + p*L, start + (p+1)*L)` of a global batch (zero rows past the end)."""
    local = global_rows // jax.process_count()
    first = start + jax.process_index() * local
    padding = {key: np.zeros(source.row_len, np.int32) for key in prepared.ROW_FIELDS}
    rows = [source[i] if i < len(source) else padding for i in range(first, first + local)]
    batch = batch_from_tokens(*(np.stack([r[key] for r in rows]) for key in prepared.ROW_FIELDS))
    return {key: batch[key] for key in ("input_ids", "targets", "segment_ids")}


def _write_shard(path: Path, values: np.ndarray, dtype: str) -> dict[str, Any]:
    """Write the `[rows, 2, seq_len]` scores of one shard, atomically (a temporary file renamed);
    returns the written file's `integrity.file_entry` (its size and sha256)."""
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    try:
        for row in values:
            writer.write(scores.scores_to_record(row[0], row[1], dtype))
    finally:
        writer.close()
    checksum = file_entry(tmp)
    tmp.replace(path)
    return checksum


def score(cfg: ScoreConfig) -> dict[str, Any]:
    """Score every unfinished shard of `cfg.rows` into `cfg.output` (a finished shard whose file is
    missing or damaged counts as unfinished); returns the output's metadata plus `tokens_per_sec`
    of this invocation."""
    rows_dir = Path(cfg.rows)
    rows_metadata = prepared.read_metadata(rows_dir)
    seq_len = rows_metadata["seq_len"]
    ref_config = read_model_config(cfg.reference, "reference")
    _check_tokenizer(cfg, rows_metadata)
    mesh = make_mesh(cfg.mesh)
    shards_in_batch = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if cfg.batch_size % shards_in_batch or cfg.batch_size % jax.process_count():
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the mesh's {shards_in_batch} batch shards "
                          f"and the {jax.process_count()} processes.")
    metadata = _open_output(cfg, _run_metadata(cfg, rows_metadata))
    output = Path(cfg.output)
    # Every process has judged the output directory as it was before this run; only then may process 0
    # create it (else a later process could find it half-made and refuse it).
    barrier("score-output-checked")
    if is_primary():
        output.mkdir(parents=True, exist_ok=True)
        scores.write_metadata(output, metadata)
    barrier("score-output-ready")
    todo = [s for s in rows_metadata["shards"] if s not in metadata["finished_shards"]]
    if not todo:
        log.info("%s is complete (%d shards); nothing to do.", output, len(rows_metadata["shards"]))
        return metadata

    graphdef, abstract = model_graph(ref_config, cfg.reference)
    params = load_params(cfg.reference, ref_config, abstract, mesh, seed=0)
    forward = build_reference_scorer(graphdef, mesh, cfg.ce_chunk_size)
    sharding = batch_sharding(mesh)
    sources = {shard: PackedRowSource([str(rows_dir / shard)]) for shard in todo}
    total = sum(len(source) for source in sources.values()) * seq_len
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="score", disable=not is_primary(), dynamic_ncols=True)
    started, scored = time.perf_counter(), 0
    for shard, source in sources.items():
        values = np.empty((len(source), len(scores.SCORE_FIELDS), seq_len), np.float32)
        for start in range(0, len(source), cfg.batch_size):
            batch = to_global_batch(_local_rows(source, start, cfg.batch_size), sharding)
            loss, entropy = (np.asarray(x) for x in forward(params, batch))
            count = min(cfg.batch_size, len(source) - start)
            values[start:start + count] = np.stack([loss[:count], entropy[:count]], axis=1)
            scored += count * seq_len
            bar.update(count * seq_len)
        if is_primary():
            name = scores.score_shard_name(shard)
            metadata["shard_checksums"][name] = _write_shard(output / name, values, cfg.dtype)
            metadata["finished_shards"].append(shard)
            metadata["complete"] = len(metadata["finished_shards"]) == len(rows_metadata["shards"])
            scores.write_metadata(output, metadata)
        barrier(f"scored-{shard}")
    bar.close()
    rate = scored / max(time.perf_counter() - started, 1e-9)
    log.info("scored %d tokens in %d shards at %.0f tokens/s into %s", scored, len(todo), rate, output)
    return {**metadata, "tokens_per_sec": rate}
