"""Tokenize and pack a corpus once: `python -m rho_jax.data.prepare --tokenizer DIR --seq_len N --output DIR PATH...`

Documents are read in file order and go through the same `encode_document` + `pack_documents`
as online training; the rows are written as ArrayRecord shards plus `metadata.json` (layout in
`rho_jax.data.prepared`). A training source with `format: arrayrecord` (or `*.array_record` paths)
then skips tokenization and packing. The output appears only when complete (staging directory,
renamed at the end), and only an empty directory or an earlier rho_jax output is replaced.
Bad records are found before anything is written: `--on_bad_record error` (the default) refuses the
corpus naming the first, `skip` leaves them out (logged; their counts go into the metadata).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from rho_jax.data import prepared
from rho_jax.data.config import BAD_RECORD_POLICIES, FORMATS, TEXT_SPLITS, SourceConfig
from rho_jax.data.packing import Row, source_rows
from rho_jax.data.row_sources import PackedRowSource
from rho_jax.data.sources import Document, open_source, resolve_paths, source_format
from rho_jax.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from rho_jax.models.atomic_dir import atomic_directory


class _Progress:
    """One tqdm bar over documents read, showing packed tokens/s."""

    def __init__(self, bar: tqdm):
        self._bar = bar
        self._start = time.monotonic()
        self.tokens = 0

    def document(self, document: Document) -> Document:
        self._bar.update(1)
        return document

    def row(self, row: Row) -> None:
        self.tokens += int((row["segment_ids"] != 0).sum())
        rate = self.tokens / max(time.monotonic() - self._start, 1e-9)
        self._bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)


def _write_shards(
    rows: Iterable[Row], directory: Path, rows_per_shard: int, progress: _Progress
) -> tuple[list[str], int]:
    """Write `rows` into shards of `rows_per_shard` records in `directory`; returns (shard names, row count)."""
    shards: list[str] = []
    writer = None
    num_rows = 0
    try:
        for row in rows:
            if num_rows % rows_per_shard == 0:
                if writer is not None:
                    writer.close()
                shards.append(prepared.shard_name(len(shards)))
                writer = ArrayRecordWriter(str(directory / shards[-1]), "group_size:1")
            writer.write(prepared.row_to_record(row))
            num_rows += 1
            progress.row(row)
    finally:
        if writer is not None:
            writer.close()
    return shards, num_rows


def prepare(
    source: SourceConfig,
    *,
    tokenizer: str,
    seq_len: int,
    output: str,
    rows_per_shard: int = 8192,
    on_bad_record: str = "error",
) -> dict[str, Any]:
    """Tokenize and pack the documents of `source` into `output`; returns the written metadata.

    Bad records are refused or left out as `on_bad_record` says (`open_source`)."""
    if seq_len < 2:
        raise ValueError(f"--seq_len must be an integer > 1, got {seq_len}.")
    if rows_per_shard < 1:
        raise ValueError(f"--rows_per_shard must be >= 1, got {rows_per_shard}.")
    hf_tokenizer = load_tokenizer(tokenizer)
    documents = open_source(source, on_bad_record)
    if isinstance(documents, PackedRowSource):
        raise ValueError(f"source {source.name!r} is already prepared (arrayrecord); prepare reads documents.")
    paths = resolve_paths(source)
    with atomic_directory(output) as staging, tqdm(total=len(documents), unit="doc", desc="prepare") as bar:
        progress = _Progress(bar)
        rows = source_rows(documents, hf_tokenizer, seq_len + 1, lambda ds: ds.map(progress.document))
        shards, num_rows = _write_shards(rows, staging, rows_per_shard, progress)
        metadata = {
            "seq_len": seq_len,
            "row_len": seq_len + 1,
            "num_rows": num_rows,
            "num_documents": len(documents),
            "num_tokens": progress.tokens,
            "tokenizer": str(tokenizer),
            "tokenizer_fingerprint": tokenizer_fingerprint(hf_tokenizer),
            "shards": shards,
            "source": {
                "paths": paths,
                "format": source_format(source, paths),
                "text_field": source.text_field,
                "prompt_field": source.prompt_field,
                "text_split": source.text_split,
                "on_bad_record": on_bad_record,
                "skipped_records": documents.bad_records.counts,
            },
        }
        prepared.write_metadata(staging, **metadata)
    print(
        f"wrote {num_rows} rows ({progress.tokens} tokens, {len(documents)} documents) "
        f"in {len(shards)} shards to {output}"
    )
    return metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="local Hugging Face tokenizer directory")
    parser.add_argument("--seq_len", type=int, required=True, help="model input length T (rows hold T + 1 tokens)")
    parser.add_argument("--output", required=True, help="directory to write (new, empty, or an earlier output)")
    formats = [f for f in FORMATS if f != "arrayrecord"]
    parser.add_argument("--format", default="auto", choices=formats, help="input format (default: by extension)")
    parser.add_argument("--text_field", default="text", help="jsonl/parquet field with the document text")
    parser.add_argument("--prompt_field", default=None, help="jsonl/parquet field with a prompt (masked from targets)")
    parser.add_argument("--text_split", default="file", choices=TEXT_SPLITS, help="text: a document per file or line")
    parser.add_argument("--rows_per_shard", type=int, default=8192)
    parser.add_argument("--on_bad_record", default="error", choices=BAD_RECORD_POLICIES,
                        help="a record that is not a document (bad JSON or UTF-8, missing field): "
                             "refuse the corpus (default) or skip it (logged)")
    parser.add_argument("paths", nargs="+", metavar="PATH_OR_GLOB")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line; returns the written metadata."""
    args = build_parser().parse_args(argv)
    source = SourceConfig(
        paths=tuple(args.paths),
        format=args.format,
        text_field=args.text_field,
        prompt_field=args.prompt_field,
        text_split=args.text_split,
    )
    return prepare(
        source, tokenizer=args.tokenizer, seq_len=args.seq_len, output=args.output, rows_per_shard=args.rows_per_shard,
        on_bad_record=args.on_bad_record,
    )


def cli() -> int:
    """`main` with bad input reported as one `error:` line and exit code 2 instead of a traceback;
    warnings (skipped records) are logged to stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
