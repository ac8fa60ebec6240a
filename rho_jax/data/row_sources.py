"""Sources of rows already tokenized and packed by `python -m rho_jax.data.prepare`, optionally with
their precomputed reference scores."""

from __future__ import annotations

from pathlib import Path

import grain
import numpy as np

from rho_jax.data import prepared, scores


class PackedRowSource:
    """Rows written by `rho_jax.data.prepare`: `{"tokens", "segment_ids", "loss_mask"}`, each `[row_len]`.

    Every shard's directory must hold a `metadata.json`; shards from several directories must
    agree on seq_len and tokenizer. `metadata` is that shared metadata.
    """

    def __init__(self, paths: list[str]):
        directories = sorted({Path(p).parent for p in paths})
        metadatas = {d: prepared.read_metadata(d) for d in directories}
        self.metadata = metadatas[directories[0]]
        for directory, metadata in metadatas.items():
            for key in ("seq_len", "row_len", "tokenizer_fingerprint"):
                if metadata[key] != self.metadata[key]:
                    raise ValueError(
                        f"prepared directories {directories[0]} and {directory} differ in {key} "
                        f"({self.metadata[key]} vs {metadata[key]}); use one source per directory."
                    )
        self.row_len: int = self.metadata["row_len"]
        self._records = grain.sources.ArrayRecordDataSource(list(paths))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return prepared.record_to_row(self._records[i], self.row_len)


class ScoredRowSource(PackedRowSource):
    """Prepared rows of one directory with their precomputed reference scores: each row also has
    `ref_loss` and `ref_entropy`, float32 `[seq_len]` (`rho_jax.data.scores`). The scores must have
    been computed on exactly these rows (fingerprints) and cover every shard read."""

    def __init__(self, paths: list[str], scores_dir: str, name: str):
        super().__init__(paths)
        directories = sorted({str(Path(p).parent) for p in paths})
        if len(directories) != 1:
            raise ValueError(f"source {name!r}: a source with scores must read one prepared directory, "
                             f"its paths span {directories}.")
        self.scores_metadata = scores.read_metadata(Path(scores_dir))
        shard_names = [Path(p).name for p in paths]
        scores.check_scores(self.scores_metadata, f"source {name!r} (scores {scores_dir})", self.metadata, shard_names)
        self._dtype = self.scores_metadata["dtype"]
        self._scores = grain.sources.ArrayRecordDataSource(
            [str(Path(scores_dir) / scores.score_shard_name(shard)) for shard in shard_names])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return super().__getitem__(i) | scores.record_to_scores(self._scores[i], self.row_len - 1, self._dtype)
