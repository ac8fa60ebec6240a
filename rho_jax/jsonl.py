"""Reading JSON-lines files: one JSON object per non-blank line (user-given files with errors naming file and
line; shards written by a pipeline, plain or gzip)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple


class Line(NamedTuple):
    """Where a row came from; prints as `<path>, line <number>`."""

    path: Path
    number: int

    def __str__(self) -> str:
        return f"{self.path}, line {self.number}"


def json_objects(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[Line, dict[str, Any]]]:
    """(`Line`, object) for each non-blank line of `path`; a line that is not valid JSON or not a JSON
    object raises `error` naming the file and the line."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            where = Line(path, number)
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise error(f"{where}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise error(f"{where}: a row must be a JSON object, got {type(row).__name__}")
            yield where, row


def json_lines(path: str | Path) -> Iterator[Any]:
    """The JSON value of each non-blank line of `path`, a pipeline's own output (gzip when named `.gz`)."""
    path = Path(path)
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as handle:
        yield from (json.loads(line) for line in handle if line.strip())
