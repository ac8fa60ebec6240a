"""Reading a JSONL corpus into datatrove Documents, refusing records that lack the text field."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from datatrove.io import get_datafolder
from datatrove.pipeline.readers import JsonlReader

SHARD_GLOB = "**/*.jsonl*"


def _require_text(reader: JsonlReader, data: dict, path: str, id_in_file: int | str) -> dict[str, Any]:
    """datatrove's default record -> Document mapping, after checking that the record has a string text field."""
    where = f"{reader.data_folder.resolve_paths(path)}:{id_in_file + 1 if isinstance(id_in_file, int) else id_in_file}"
    if reader.text_key not in data:
        raise ValueError(f"{where}: the record has no {reader.text_key!r} field (its fields: {sorted(data)}); "
                         "name the field that holds the text (--text-key).")
    if not isinstance(data[reader.text_key], str):
        raise ValueError(f"{where}: the {reader.text_key!r} field must be a string, got "
                         f"{type(data[reader.text_key]).__name__}.")
    return reader._default_adapter(data, path, id_in_file)


def _exact_glob(name: str) -> str:
    """A glob pattern matching the file name `name` only. (datatrove prefixes a pattern without wildcards
    with `*`, so the first character goes in brackets.)"""
    first = name[0] if name[0] in "]!^\\" else f"[{name[0]}]"
    return first + glob.escape(name[1:])


def corpus_reader(folder: str | Path, *, text_key: str = "text", id_key: str = "id", glob_pattern: str = SHARD_GLOB,
                  limit: int = -1, progress: bool = False) -> JsonlReader:
    """A datatrove JsonlReader of the `glob_pattern` files under `folder` (any datatrove/fsspec path; gzip/zstd
    inferred), or of the one file `folder` when it is a local file. Documents take their text from `text_key`
    and their id from `id_key` (default: `file/line`); every other field goes into the metadata. A record
    without the text field, or whose text is not a string, stops the task with a ValueError naming the file
    and line; an empty text is skipped (as datatrove's reader does). `progress`: a bar of the documents read."""
    if Path(folder).is_file():
        folder, glob_pattern = Path(folder).parent, _exact_glob(Path(folder).name)
    if not get_datafolder(str(folder)).list_files(glob_pattern=glob_pattern):
        raise FileNotFoundError(f"corpus folder {folder} does not exist or holds no {glob_pattern} files.")
    return JsonlReader(str(folder), text_key=text_key, id_key=id_key, glob_pattern=glob_pattern, limit=limit,
                       doc_progress=progress, adapter=_require_text)
