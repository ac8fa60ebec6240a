"""Input documents: JSONL or Parquet files, one shard per file, each row a document with a `text`
string and optional `title` and `id` (a row without `id` is named `<shard>:<row>`, rows from 0).

A shard is read whole and checked before anything is generated from it: a row whose `text` is
missing, not a string or empty (only whitespace) is an error naming the file and row, so no output
of that shard is written (an empty document is a mistake in the input, not something to skip).
"""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

from rho_jax.jsonl import json_objects

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""


def shard_name(path: Path) -> str:
    """The shard's name: its file name without the format suffix (`docs/a.jsonl` -> `a`)."""
    return path.name[: -len(path.suffix)] if path.suffix in SUFFIXES else path.name


def input_shards(patterns: list[str]) -> list[Path]:
    """The files `patterns` name (paths or globs, `**` recursive), sorted; errors for a pattern that
    matches nothing, a file of another format, or two shards with the same name."""
    paths: set[Path] = set()
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matched = [m for m in matched if Path(m).is_file()]
        if not matched:
            raise FileNotFoundError(f"no input file matches {pattern!r}.")
        paths.update(Path(m) for m in matched)
    shards = sorted(paths)
    for path in shards:
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{path}: input documents must be {sorted(SUFFIXES)} files, got {path.suffix or 'no suffix'!r}.")
    names: dict[str, Path] = {}
    for path in shards:
        other = names.setdefault(shard_name(path), path)
        if other != path:
            raise ValueError(f"two input shards have the same name {shard_name(path)!r} ({other} and {path}); "
                             "rename one: outputs are stored by shard name.")
    return shards


def _records(path: Path) -> list[dict]:
    if SUFFIXES[path.suffix] == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [record for _, record in json_objects(path)]


def read_shard(path: Path) -> list[Document]:
    """The documents of one shard (see the module docstring)."""
    documents = []
    for row, record in enumerate(_records(path)):
        where = f"{path} row {row}"
        text = record.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}: 'text' must be a string, got {type(text).__name__} (fields: {sorted(record)}).")
        if not text.strip():
            raise ValueError(f"{where}: the document is empty; remove it or give it text.")
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise ValueError(f"{where}: 'title' must be a string or absent, got {type(title).__name__}.")
        doc_id = record.get("id")
        documents.append(Document(id=f"{shard_name(path)}:{row}" if doc_id is None else str(doc_id), text=text, title=title))
    if not documents:
        raise ValueError(f"{path} holds no documents.")
    return documents
