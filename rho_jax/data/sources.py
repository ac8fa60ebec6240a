"""Random-access sources: one class per file format, plus path resolution and `open_source`.

A document source has `__len__` and `__getitem__(i) -> {"text": str, "prompt": str | None}`, so it
plugs into `grain.MapDataset.source`. `PackedRowSource` instead yields rows already tokenized and
packed by `rho_jax.data.prepare`. Every source is picklable and opens files lazily in the process
(and thread) that reads, so grain worker processes and prefetch threads can share it. Malformed
input raises ValueError naming the file (and line or row) when that document is read.
"""

from __future__ import annotations

import glob
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rho_jax.data import prepared, scores
from rho_jax.data.config import SourceConfig

EXTENSION_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "text",
    ".array_record": "arrayrecord",
}


class Document(TypedDict):
    text: str
    prompt: str | None


def resolve_paths(source: SourceConfig) -> list[str]:
    """The files of `source`: each pattern expanded (`**` recursive) and sorted, in pattern order, without repeats.

    Raises FileNotFoundError naming the first pattern that matches no file.
    """
    resolved: dict[str, None] = {}
    for pattern in source.paths:
        files = [p for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if os.path.isfile(p)]
        if not files:
            raise FileNotFoundError(f"source {source.name!r}: {pattern!r} matches no file.")
        resolved.update(dict.fromkeys(files))
    return list(resolved)


def source_format(source: SourceConfig, paths: list[str]) -> str:
    """`source.format`, or for "auto" the one format that the extensions of `paths` name."""
    if source.format != "auto":
        return source.format
    suffixes = sorted({Path(p).suffix.lower() for p in paths})
    unknown = [s or "(none)" for s in suffixes if s not in EXTENSION_FORMATS]
    if unknown:
        raise ValueError(
            f"source {source.name!r}: cannot tell the format of files with extension {unknown}; known extensions are "
            f"{sorted(EXTENSION_FORMATS)}. Set the source's format to one of jsonl, parquet, text, arrayrecord."
        )
    formats = sorted({EXTENSION_FORMATS[s] for s in suffixes})
    if len(formats) > 1:
        raise ValueError(
            f"source {source.name!r}: its files mix formats {formats} (extensions {suffixes}); "
            "use one source per format."
        )
    return formats[0]


def _string_field(record: Mapping[str, Any], field: str) -> str:
    if field not in record:
        raise ValueError(f"no field {field!r} (fields: {sorted(record)}); set the source's text_field/prompt_field.")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type(value).__name__} {repr(value)[:60]}.")
    return value


def _document(record: Mapping[str, Any], text_field: str, prompt_field: str | None) -> Document:
    """The document in `record`; ValueError (without location: callers prefix it) if a field is missing or not text."""
    prompt = None if prompt_field is None else _string_field(record, prompt_field)
    return {"text": _string_field(record, text_field), "prompt": prompt}


def _line_number(path: str, offset: int) -> int:
    """1-based number of the line starting at byte `offset` of `path` (computed only for error messages)."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            chunk = f.read(min(offset, 1 << 20))
            count += chunk.count(b"\n")
            offset -= len(chunk)
    return count + 1


class _LineSource:
    """Every non-empty line of `paths` is one item; the index (file, byte offset, length) is built in one pass."""

    def __init__(self, paths: list[str]):
        self._paths = list(paths)
        files, starts, lengths = [], [], []
        for index, path in enumerate(self._paths):
            position = 0
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        files.append(index)
                        starts.append(position)
                        lengths.append(len(line))
                    position += len(line)
        self._files = np.asarray(files, np.int32)
        self._starts = np.asarray(starts, np.int64)
        self._lengths = np.asarray(lengths, np.int64)

    def __len__(self) -> int:
        return len(self._starts)

    def _read(self, i: int) -> bytes:
        """The raw bytes of line `i` (with its line break)."""
        with open(self._paths[self._files[i]], "rb") as f:  # opened per read: safe across threads, forks, pickling
            f.seek(int(self._starts[i]))
            return f.read(int(self._lengths[i]))

    def _where(self, i: int) -> str:
        """`file:line` of line `i`, for messages."""
        path = self._paths[self._files[i]]
        return f"{path}:{_line_number(path, int(self._starts[i]))}"


class JsonlSource(_LineSource):
    """JSON Lines files: each non-empty line is a JSON object holding the document's fields."""

    def __init__(self, paths: list[str], text_field: str = "text", prompt_field: str | None = None):
        super().__init__(paths)
        self._text_field = text_field
        self._prompt_field = prompt_field

    def __getitem__(self, i: int) -> Document:
        try:
            try:
                record = json.loads(self._read(i))
            except ValueError as e:
                raise ValueError(f"invalid JSON ({e}).") from e
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}.")
            return _document(record, self._text_field, self._prompt_field)
        except ValueError as e:
            raise ValueError(f"{self._where(i)}: {e}") from e


class TextLineSource(_LineSource):
    """Plain UTF-8 text files in which every non-empty line is one document."""

    def __getitem__(self, i: int) -> Document:
        try:
            text = self._read(i).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self._where(i)}: not valid UTF-8 text ({e}).") from e
        return {"text": text.rstrip("\r\n"), "prompt": None}


class TextFileSource:
    """Plain UTF-8 text files in which every (non-empty) file is one document."""

    def __init__(self, paths: list[str]):
        self._paths = [p for p in paths if os.path.getsize(p) > 0]

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> Document:
        path = self._paths[i]
        try:
            return {"text": Path(path).read_bytes().decode("utf-8"), "prompt": None}
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not valid UTF-8 text ({e}).") from e


class ParquetSource:
    """Parquet files: each row is one document; columns `text_field` (and `prompt_field`) hold it.

    Rows are located through an index of row groups; the last row group read is cached (per
    process), so reading in file order decodes each group once. Random order decodes a group per
    document: for large parquet corpora, run `rho_jax.data.prepare` once instead.
    """

    def __init__(self, paths: list[str], text_field: str = "text", prompt_field: str | None = None):
        self._paths = list(paths)
        self._text_field = text_field
        self._prompt_field = prompt_field
        self._columns = [text_field] + ([prompt_field] if prompt_field is not None else [])
        groups, starts, file_starts = [], [], []  # per non-empty row group: (file, group), first row, first row in file
        total = 0
        for index, path in enumerate(self._paths):
            try:
                metadata = pq.ParquetFile(path).metadata
            except pa.ArrowException as e:
                raise ValueError(f"{path}: not a readable parquet file ({e}).") from e
            names = metadata.schema.to_arrow_schema().names
            for column in self._columns:
                if column not in names:
                    raise ValueError(
                        f"{path}: no column {column!r}; available columns: {names}. "
                        "Set the source's text_field/prompt_field."
                    )
            in_file = 0
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                if rows:
                    groups.append((index, group))
                    starts.append(total)
                    file_starts.append(in_file)
                    total += rows
                    in_file += rows
        self._groups = np.asarray(groups, np.int64).reshape(-1, 2)
        self._starts = np.asarray(starts, np.int64)
        self._file_starts = np.asarray(file_starts, np.int64)
        self._length = total
        self._init_cache()

    def _init_cache(self) -> None:
        self._lock = threading.Lock()
        self._cached_group: tuple[int, int] | None = None
        self._cached_table: pa.Table | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cached_group", "_cached_table")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return self._length

    def _row_group(self, file_index: int, group: int) -> pa.Table:
        with self._lock:
            if self._cached_group != (file_index, group):
                parquet_file = pq.ParquetFile(self._paths[file_index])
                self._cached_table = parquet_file.read_row_group(group, columns=self._columns)
                self._cached_group = (file_index, group)
            return self._cached_table

    def __getitem__(self, i: int) -> Document:
        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        file_index, group = (int(x) for x in self._groups[g])
        row = i - int(self._starts[g])
        table = self._row_group(file_index, group)
        record = {column: table.column(column)[row].as_py() for column in self._columns}
        try:
            return _document(record, self._text_field, self._prompt_field)
        except ValueError as e:
            raise ValueError(f"{self._paths[file_index]} row {int(self._file_starts[g]) + row}: {e}") from e


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


DocumentSource = JsonlSource | TextLineSource | TextFileSource | ParquetSource


def open_source(source: SourceConfig) -> DocumentSource | PackedRowSource:
    """The random-access source for `source`; raises if its files are missing, of unknown format, or hold nothing."""
    paths = resolve_paths(source)
    fmt = source_format(source, paths)
    if source.scores is not None and fmt != "arrayrecord":
        raise ValueError(f"source {source.name!r}: scores belong to prepared rows (arrayrecord), but its files are "
                         f"{fmt}; run python -m rho_jax.data.prepare, then python -m rho_jax.score on the rows.")
    if fmt in ("text", "arrayrecord") and source.prompt_field is not None:
        raise ValueError(
            f"source {source.name!r}: prompt_field is set, but {fmt} sources have no fields; "
            "prompt/response data must be jsonl or parquet (prepare applies the prompt mask before writing rows)."
        )
    if fmt == "jsonl":
        opened = JsonlSource(paths, source.text_field, source.prompt_field)
    elif fmt == "parquet":
        opened = ParquetSource(paths, source.text_field, source.prompt_field)
    elif fmt == "text":
        opened = TextLineSource(paths) if source.text_split == "line" else TextFileSource(paths)
    elif source.scores is not None:
        opened = ScoredRowSource(paths, source.scores, source.name)
    else:
        opened = PackedRowSource(paths)
    if len(opened) == 0:
        raise ValueError(f"source {source.name!r} holds no documents: its {fmt} files {paths} are empty.")
    return opened
