"""What the data pipeline reads and how: one `SourceConfig` per corpus, one `DataConfig` for the run.

Both are frozen dataclasses validated on construction, so a bad value fails when the config is
loaded, not hours into a run. Sequences are tuples (a list given in Python is converted).
"""

from __future__ import annotations

import dataclasses
import math

FORMATS = ("auto", "jsonl", "parquet", "text", "arrayrecord")
TEXT_SPLITS = ("file", "line")
# What opening a source does with a record that is not a document (`rho_jax.data.sources.open_source`).
BAD_RECORD_POLICIES = ("error", "skip")
# grain shuffle seeds are uint32 and each source gets `seed + source index`.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One corpus of documents (or of prepared rows).

    paths: files or glob patterns (`**` matches recursively); at least one.
    format: "jsonl" | "parquet" | "text" | "arrayrecord" | "auto" (by file extension: .jsonl/.json,
      .parquet, .txt/.md, .array_record).
    weight: mixture weight (> 0): the share of packed rows (= tokens) drawn from this source.
    name: for messages and metrics; defaults to the first path.
    text_field: the jsonl/parquet field holding the document text.
    prompt_field: if set, each document is prompt (this field) + response (`text_field`) and only
      the response tokens are targets (instruction data).
    text_split: for text files, "file" (a whole file is one document) or "line" (every non-empty
      line is one document).
    scores: for prepared rows of one directory, the directory of their reference scores written by
      `python -m rho_jax.score` (used with `reference: {init: precomputed}`).
    """

    paths: tuple[str, ...]
    format: str = "auto"
    weight: float = 1.0
    name: str = ""
    text_field: str = "text"
    prompt_field: str | None = None
    text_split: str = "file"
    scores: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.paths, str):
            raise ValueError(f"source paths must be a list of files or glob patterns, got the string {self.paths!r}.")
        object.__setattr__(self, "paths", tuple(self.paths))
        if not self.paths or not all(isinstance(p, str) and p for p in self.paths):
            raise ValueError(f"source paths must be a non-empty list of non-empty strings, got {list(self.paths)}.")
        if not self.name:
            object.__setattr__(self, "name", self.paths[0])
        if self.format not in FORMATS:
            raise ValueError(f"source {self.name!r}: format must be one of {FORMATS}, got {self.format!r}.")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"source {self.name!r}: weight must be a finite number > 0, got {self.weight}.")
        if not self.text_field:
            raise ValueError(f"source {self.name!r}: text_field must be a non-empty field name.")
        if self.prompt_field is not None and self.prompt_field in ("", self.text_field):
            raise ValueError(
                f"source {self.name!r}: prompt_field must be null or a field other than text_field "
                f"({self.text_field!r}), got {self.prompt_field!r}."
            )
        if self.scores is not None and not self.scores:
            raise ValueError(f"source {self.name!r}: scores must be a directory written by rho_jax.score, or null.")
        if self.text_split not in TEXT_SPLITS:
            raise ValueError(f"source {self.name!r}: text_split must be one of {TEXT_SPLITS}, got {self.text_split!r}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data of a run.

    tokenizer: local Hugging Face tokenizer directory.
    sources: the corpora mixed by their weights; at least one.
    seq_len: model input length T (> 1); packed rows hold T + 1 tokens.
    seed: shuffling seed (source i shuffles with seed + i).
    num_workers: grain worker processes (0 = read and tokenize in the training process).
    on_bad_record: what opening a source (before training) does with a record that is not a
      document (invalid UTF-8 or JSON, a missing, non-string or null text/prompt field): "error"
      refuses the source naming the first one, "skip" leaves every such record out and logs it.
    """

    tokenizer: str
    sources: tuple[SourceConfig, ...]
    seq_len: int = 2048
    seed: int = 0
    num_workers: int = 0
    on_bad_record: str = "error"

    def __post_init__(self) -> None:
        if not self.tokenizer:
            raise ValueError("data.tokenizer must be a local Hugging Face tokenizer directory.")
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources or not all(isinstance(s, SourceConfig) for s in self.sources):
            raise ValueError(f"data.sources must be a non-empty list of sources, got {self.sources!r}.")
        if self.seq_len < 2:
            raise ValueError(f"data.seq_len must be an integer > 1, got {self.seq_len}.")
        if not 0 <= self.seed <= MAX_SEED - len(self.sources):
            raise ValueError(f"data.seed must be in [0, {MAX_SEED - len(self.sources)}], got {self.seed}.")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}.")
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            raise ValueError(f"data.on_bad_record must be one of {BAD_RECORD_POLICIES}, got {self.on_bad_record!r}.")
