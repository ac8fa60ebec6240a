"""Reading user-given JSON-lines files: one JSON object per non-blank line, errors naming file and line."""

from __future__ import annotations

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
