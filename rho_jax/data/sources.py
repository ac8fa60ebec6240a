"""Random-access sources: one class per file format, plus path resolution and `open_source`.

A document source has `__len__` and `__getitem__(i) -> {"text": str, "prompt": str | None}`, so it
plugs into `grain.MapDataset.source`. `PackedRowSource` instead yields rows already tokenized and
packed by `rho_jax.data.prepare`. Every source is picklable and opens files lazily in the process
(and thread) that reads, so grain worker processes and prefetch threads can share it.

Bad records (a line that is not valid UTF-8 or not a JSON object with the text and prompt fields as
strings, a text file that is not UTF-8, a null in a parquet text or prompt column) are found when a
source is opened, in the streaming pass that indexes it: `open_source` then refuses the source
naming the first one (policy "error"), or leaves them all out and logs each (policy "skip"). A
document read later that is malformed anyway (the file changed) raises ValueError naming the file
and line or row.
"""

from __future__ import annotations

import codecs
import glob
import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rho_jax.data.bad_records import BadRecord, BadRecords
from rho_jax.data.config import BAD_RECORD_POLICIES, SourceConfig
from rho_jax.data.row_sources import PackedRowSource, ScoredRowSource

EXTENSION_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "text",
    ".array_record": "arrayrecord",
}

logger = logging.getLogger("rho_jax.data")


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
        raise BadRecord(f"no field {field!r} (fields: {sorted(record)}); set the source's text_field/prompt_field.",
                        "missing field")
    value = record[field]
    if not isinstance(value, str):
        raise BadRecord(f"field {field!r} must be a string, got {type(value).__name__} {repr(value)[:60]}.",
                        "not a string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a JSON escape such as "\ud800": no tokenizer takes it
            raise BadRecord(f"field {field!r} is not valid Unicode ({e}).", "invalid UTF-8") from e
    return value


def _document(record: Mapping[str, Any], text_field: str, prompt_field: str | None) -> Document:
    """The document in `record`; BadRecord if a field is missing or not text."""
    prompt = None if prompt_field is None else _string_field(record, prompt_field)
    return {"text": _string_field(record, text_field), "prompt": prompt}


def _utf8(raw: bytes) -> str:
    """`raw` decoded; BadRecord if it is not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(f"not valid UTF-8 text ({e}).", "invalid UTF-8") from e


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
    """Every non-empty line of `paths` is one item, parsed by `_parse`.

    One streaming pass over the files builds the index (file, byte offset, length) and parses every
    non-empty line; the lines that `_parse` rejects are counted in `bad_records`. With `skip_bad`
    they are left out of the index, else they stay in it and raise ValueError when read.
    """

    def __init__(self, paths: list[str], skip_bad: bool = False):
        self._paths = list(paths)
        self.bad_records = BadRecords()
        files, starts, lengths = [], [], []
        for index, path in enumerate(self._paths):
            position = 0
            with open(path, "rb") as f:
                for number, line in enumerate(f, 1):
                    if line.strip() and not (self.bad_records.check(f"{path}:{number}", self._parse, line) and skip_bad):
                        files.append(index)
                        starts.append(position)
                        lengths.append(len(line))
                    position += len(line)
        self._files = np.asarray(files, np.int32)
        self._starts = np.asarray(starts, np.int64)
        self._lengths = np.asarray(lengths, np.int64)

    def _parse(self, line: bytes) -> Document:
        """The document on `line` (raw bytes with the line break); BadRecord if it holds none."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> Document:
        try:
            return self._parse(self._read(i))
        except BadRecord as e:
            raise ValueError(f"{self._where(i)}: {e}") from e

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

    def __init__(
        self, paths: list[str], text_field: str = "text", prompt_field: str | None = None, skip_bad: bool = False
    ):
        self._text_field = text_field
        self._prompt_field = prompt_field
        super().__init__(paths, skip_bad)

    def _parse(self, line: bytes) -> Document:
        text = _utf8(line.removeprefix(codecs.BOM_UTF8))  # a byte order mark may start the file
        try:
            record = json.loads(text)
        except ValueError as e:
            raise BadRecord(f"invalid JSON ({e}).", "invalid JSON") from e
        if not isinstance(record, dict):
            raise BadRecord(f"expected a JSON object, got {type(record).__name__}.", "not a JSON object")
        return _document(record, self._text_field, self._prompt_field)


class TextLineSource(_LineSource):
    """Plain UTF-8 text files in which every non-empty line is one document."""

    def _parse(self, line: bytes) -> Document:
        return {"text": _utf8(line).rstrip("\r\n"), "prompt": None}


def _text_file(path: str) -> Document:
    """The whole file `path` as one document; BadRecord if it is not UTF-8."""
    return {"text": _utf8(Path(path).read_bytes()), "prompt": None}


class TextFileSource:
    """Plain UTF-8 text files in which every (non-empty) file is one document.

    Opening decodes every file once; the files that are not UTF-8 are counted in `bad_records`.
    With `skip_bad` they are left out, else they stay and raise ValueError when read.
    """

    def __init__(self, paths: list[str], skip_bad: bool = False):
        self.bad_records = BadRecords()
        self._paths = [
            p for p in paths if os.path.getsize(p) > 0 and not (self.bad_records.check(p, _text_file, p) and skip_bad)
        ]

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> Document:
        path = self._paths[i]
        try:
            return _text_file(path)
        except BadRecord as e:
            raise ValueError(f"{path}: {e}") from e


def _is_text_type(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        return _is_text_type(arrow_type.value_type)
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type)


class ParquetSource:
    """Parquet files: each row is one document; columns `text_field` (and `prompt_field`) hold it.

    Opening reads only the metadata, refuses a file whose text or prompt column is missing or not of
    a string type, and counts the rows where such a column is null in `bad_records` (a row group's
    column is read only where its statistics do not rule nulls out). With `skip_bad` those rows are
    left out, else they stay and raise ValueError when read.

    Rows are located through an index of row groups; the last row group read is cached (per
    process), so reading in file order decodes each group once. Random order decodes a group per
    document: for large parquet corpora, run `rho_jax.data.prepare` once instead.
    """

    def __init__(
        self, paths: list[str], text_field: str = "text", prompt_field: str | None = None, skip_bad: bool = False
    ):
        self._paths = list(paths)
        self._text_field = text_field
        self._prompt_field = prompt_field
        self._columns = [text_field] + ([prompt_field] if prompt_field is not None else [])
        self.bad_records = BadRecords()
        groups, starts, file_starts = [], [], []  # per non-empty row group: (file, group), first row, first row in file
        skipped: list[int] = []  # rows left out, counted over all files
        total = 0
        for index, path in enumerate(self._paths):
            try:
                parquet_file = pq.ParquetFile(path)
            except pa.ArrowException as e:
                raise ValueError(f"{path}: not a readable parquet file ({e}).") from e
            self._check_columns(path, parquet_file.schema_arrow)
            in_file = 0
            for group in range(parquet_file.metadata.num_row_groups):
                rows = parquet_file.metadata.row_group(group).num_rows
                if rows:
                    groups.append((index, group))
                    starts.append(total)
                    file_starts.append(in_file)
                    for row, column in sorted(self._nulls(parquet_file, group).items()):
                        self.bad_records.add(f"{path} row {in_file + row}",
                                             BadRecord(f"column {column!r} is null.", "null value"))
                        if skip_bad:
                            skipped.append(total + row)
                    total += rows
                    in_file += rows
        self._groups = np.asarray(groups, np.int64).reshape(-1, 2)
        self._starts = np.asarray(starts, np.int64)
        self._file_starts = np.asarray(file_starts, np.int64)
        # Item i is row i + k of all files, k = the number of skipped rows preceded by at most i kept rows.
        self._kept_before_skipped = np.asarray(skipped, np.int64) - np.arange(len(skipped))
        self._length = total - len(skipped)
        self._init_cache()

    def _check_columns(self, path: str, schema: pa.Schema) -> None:
        """ValueError unless `schema` has every column read, each of a string type."""
        for column in self._columns:
            if column not in schema.names:
                raise ValueError(
                    f"{path}: no column {column!r}; available columns: {schema.names}. "
                    "Set the source's text_field/prompt_field."
                )
            if not _is_text_type(schema.field(column).type):
                raise ValueError(
                    f"{path}: column {column!r} holds {schema.field(column).type}, not strings. "
                    "Set the source's text_field/prompt_field to a string column."
                )

    def _nulls(self, parquet_file: pq.ParquetFile, group: int) -> dict[int, str]:
        """The rows (from 0) of row group `group` in which a column read is null -> the first such column."""
        row_group = parquet_file.metadata.row_group(group)
        leaves = {row_group.column(j).path_in_schema: j for j in range(row_group.num_columns)}
        nulls: dict[int, str] = {}
        for column in self._columns:
            statistics = row_group.column(leaves[column]).statistics
            if statistics is not None and statistics.has_null_count and statistics.null_count == 0:
                continue
            values = parquet_file.read_row_group(group, columns=[column]).column(column)
            for row in np.flatnonzero(values.is_null().to_numpy()):
                nulls.setdefault(int(row), column)
        return nulls

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
        i += int(np.searchsorted(self._kept_before_skipped, i, side="right"))
        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        file_index, group = (int(x) for x in self._groups[g])
        row = i - int(self._starts[g])
        table = self._row_group(file_index, group)
        record = {column: table.column(column)[row].as_py() for column in self._columns}
        try:
            return _document(record, self._text_field, self._prompt_field)
        except BadRecord as e:
            raise ValueError(f"{self._paths[file_index]} row {int(self._file_starts[g]) + row}: {e}") from e


DocumentSource = JsonlSource | TextLineSource | TextFileSource | ParquetSource


def _apply_policy(name: str, bad_records: BadRecords, on_bad_record: str) -> None:
    """With "error", ValueError naming the first bad record; with "skip", log each skipped one (the first
    `LOGGED_BAD_RECORDS`) and the counts per reason. Nothing if the source has no bad record."""
    if not bad_records.total:
        return
    if on_bad_record == "error":
        raise ValueError(
            f"{bad_records.first[0]} Source {name!r} holds {bad_records.summary()}; set data.on_bad_record: skip "
            "(prepare: --on_bad_record skip) to skip such records."
        )
    for record in bad_records.first:
        logger.warning("source %r: skipped %s", name, record)
    unlisted = bad_records.total - len(bad_records.first)
    logger.warning("source %r: skipped %s%s.", name, bad_records.summary(),
                   f", {unlisted} of them not listed above" if unlisted else "")


def open_source(source: SourceConfig, on_bad_record: str = "error") -> DocumentSource | PackedRowSource:
    """The random-access source for `source`; raises if its files are missing, of unknown format, or hold nothing.

    Documents are checked here, in one streaming pass (`BadRecords`); `on_bad_record` ("error" or
    "skip", `BAD_RECORD_POLICIES`) says what a bad record does: raise ValueError naming it
    (`file:line: what is wrong`), or be left out of the source (`len` and indices count only the
    good records) and logged as a warning on the "rho_jax.data" logger. Prepared rows are not checked.
    """
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}.")
    skip_bad = on_bad_record == "skip"
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
        opened = JsonlSource(paths, source.text_field, source.prompt_field, skip_bad)
    elif fmt == "parquet":
        opened = ParquetSource(paths, source.text_field, source.prompt_field, skip_bad)
    elif fmt == "text":
        opened = TextLineSource(paths, skip_bad) if source.text_split == "line" else TextFileSource(paths, skip_bad)
    elif source.scores is not None:
        opened = ScoredRowSource(paths, source.scores, source.name)
    else:
        opened = PackedRowSource(paths)
    bad_records = BadRecords() if isinstance(opened, PackedRowSource) else opened.bad_records
    _apply_policy(source.name, bad_records, on_bad_record)
    if len(opened) == 0:
        contents = f"hold only the {bad_records.summary()} skipped above" if bad_records.total else "are empty"
        raise ValueError(f"source {source.name!r} holds no documents: its {fmt} files {paths} {contents}.")
    return opened
