"""Records that are not documents: the error one raises, and the tally a source keeps of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Skipped records are logged one by one up to this many per source, then only counted.
LOGGED_BAD_RECORDS = 20


class BadRecord(ValueError):
    """`BadRecord(message, reason)`: a record is not a document. The message says what is wrong
    (without location: callers prefix it); `reason` is the kind of problem, the key under which
    `BadRecords` counts it ("invalid UTF-8" (also a lone surrogate), "invalid JSON", "not a JSON object", "missing field",
    "not a string", "null value")."""

    @property
    def reason(self) -> str:
        return self.args[1]

    def __str__(self) -> str:
        return self.args[0]


class BadRecords:
    """The bad records found while opening a source: `counts` per reason, and the first
    `LOGGED_BAD_RECORDS` of them as `"location: message"` in `first` (location is `file:line`,
    `file row N` with N counted from 0, or `file`)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: list[str] = []

    def add(self, location: str, error: BadRecord) -> None:
        self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
        if len(self.first) < LOGGED_BAD_RECORDS:
            self.first.append(f"{location}: {error}")

    def check(self, location: str, parse: Callable[[Any], Any], item: Any) -> bool:
        """Whether `parse(item)` raises BadRecord; if so the record is counted under `location`."""
        try:
            parse(item)
        except BadRecord as e:
            self.add(location, e)
            return True
        return False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """E.g. `3 bad records (invalid JSON: 2, missing field: 1)`."""
        counts = ", ".join(f"{reason}: {count}" for reason, count in self.counts.items())
        return f"{self.total} bad record{'s' if self.total != 1 else ''} ({counts})"
