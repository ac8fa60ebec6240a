"""Tokenize and pack a corpus once: `python -m rho_jax.data.prepare --tokenizer DIR --seq_len N --output DIR PATH...`

Documents go through the same `encode_document` + `pack_documents` as online training; the rows are written as
ArrayRecord shards plus `metadata.json` (layout in `rho_jax.data.prepared`). A training source with
`format: arrayrecord` (or `*.array_record` paths) then skips tokenization and packing.

The work runs as datatrove tasks (`--tasks N --workers W`, `--executor local|slurm|ray`; `rho_jax.executors`):
task r tokenizes and packs its contiguous block of the input files (`prepare_plan`) into its own shards
(`prepare_task`), and once every task has finished the shards are renamed rows-00000... in task order, so the
row order depends on the files and `--tasks` only, never on the workers. Each task starts a new row: with one
task the rows are those of packing all documents in file order; with N tasks they are the concatenation, in task
order, of the rows of packing each task's files alone (each task's last row padded). An interrupted prepare resumes
by task from its work folder (finished tasks are skipped, a killed one is redone); with Slurm the command submits
the jobs and returns, and rerunning it after they finish publishes the output.

The output appears only when complete (staging directory, renamed at the end), and only an empty directory or an
earlier rho_jax output is replaced. Bad records are found before any task starts: `--on_bad_record error` (the
default) refuses the corpus naming the first, `skip` leaves them out (logged; their counts go into the metadata).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rho_jax.data import prepared
from rho_jax.data.config import BAD_RECORD_POLICIES, FORMATS, TEXT_SPLITS, SourceConfig
from rho_jax.data.prepare_plan import (
    TASK_FILE,
    PreparePlan,
    file_entries,
    read_plan,
    split_files,
    start_or_resume,
    task_directory,
    work_directory,
)
from rho_jax.data.prepare_task import PrepareTask
from rho_jax.data.row_sources import PackedRowSource
from rho_jax.data.sources import open_source, resolve_paths, source_format
from rho_jax.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from rho_jax.executors import add_executor_options, make_executor, tasks_finished
from rho_jax.models.atomic_dir import OUTPUT_MARKER, atomic_directory


def _check_replaceable(output: Path) -> None:
    """FileExistsError unless `output` is missing, empty or an earlier rho_jax output (checked again on publishing)."""
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / OUTPUT_MARKER).exists())):
        raise FileExistsError(
            f"{output} exists and is not an empty directory or an earlier rho_jax output; refusing to replace it. "
            "Choose a new or empty output directory."
        )


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes `source`'s contents: a hard link where the file system allows, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish(work: Path, output: Path, source_metadata: dict[str, Any]) -> dict[str, Any]:
    """Gather the finished tasks' shards of the plan in `work` into `output` in task order (renamed rows-00000...),
    write its metadata.json and remove `work`; returns the metadata."""
    plan = read_plan(work)
    summaries = [json.loads((task_directory(work, rank) / TASK_FILE).read_text()) for rank in range(plan.tasks)]
    with atomic_directory(output) as staging:
        shards: list[str] = []
        tasks = []
        for rank, summary in enumerate(summaries):
            names = [prepared.shard_name(len(shards) + k) for k in range(len(summary["shards"]))]
            for name, target in zip(summary["shards"], names):
                _link_or_copy(task_directory(work, rank) / name, staging / target)
            shards.extend(names)
            tasks.append({"files": plan.task_files[rank], **summary, "shards": names})
        metadata = {
            "seq_len": plan.seq_len,
            "row_len": plan.seq_len + 1,
            "num_rows": sum(s["num_rows"] for s in summaries),
            "num_documents": sum(s["num_documents"] for s in summaries),
            "num_tokens": sum(s["num_tokens"] for s in summaries),
            "tokenizer": plan.tokenizer,
            "tokenizer_fingerprint": plan.tokenizer_fingerprint,
            "shards": shards,
            "source": source_metadata,
            "tasks": tasks,
        }
        prepared.write_metadata(staging, **metadata)
    shutil.rmtree(work)
    return metadata


def _one_local_task() -> argparse.Namespace:
    """The executor options (`add_executor_options`) of a local run of one task."""
    parser = argparse.ArgumentParser()
    add_executor_options(parser)
    return parser.parse_args([])


def prepare(
    source: SourceConfig,
    *,
    tokenizer: str,
    seq_len: int,
    output: str,
    rows_per_shard: int = 8192,
    on_bad_record: str = "error",
    executor: argparse.Namespace | None = None,
) -> dict[str, Any] | None:
    """Tokenize and pack the documents of `source` into `output`; returns the written metadata, or None when
    the tasks were submitted (Slurm) or left unfinished: rerunning the same call then resumes or publishes.

    `executor` holds the `rho_jax.executors` options (default: one local task). Bad records are
    refused or left out as `on_bad_record` says (`open_source`), before any task starts."""
    if seq_len < 2:
        raise ValueError(f"--seq_len must be an integer > 1, got {seq_len}.")
    if rows_per_shard < 1:
        raise ValueError(f"--rows_per_shard must be >= 1, got {rows_per_shard}.")
    executor = executor or _one_local_task()
    if executor.tasks < 1:
        raise ValueError(f"--tasks must be >= 1, got {executor.tasks}.")
    destination = Path(output)
    _check_replaceable(destination)
    hf_tokenizer = load_tokenizer(tokenizer)
    documents = open_source(source, on_bad_record)
    if isinstance(documents, PackedRowSource):
        raise ValueError(f"source {source.name!r} is already prepared (arrayrecord); prepare reads documents.")
    paths = resolve_paths(source)
    files = file_entries(paths)
    fmt = source_format(source, paths)
    plan = PreparePlan(
        tokenizer=str(tokenizer), tokenizer_fingerprint=tokenizer_fingerprint(hf_tokenizer), seq_len=seq_len,
        rows_per_shard=rows_per_shard, format=fmt, text_field=source.text_field, prompt_field=source.prompt_field,
        text_split=source.text_split, on_bad_record=on_bad_record, files=files,
        task_files=split_files(paths, [f["bytes"] for f in files], executor.tasks),
    )
    work = work_directory(destination)
    resuming = start_or_resume(work, plan)
    if resuming:
        print(f"resuming the prepare in {work}")
    logs = work / "logs"
    started = time.monotonic()
    if not tasks_finished(logs, plan.tasks):
        make_executor([PrepareTask(work)], logs, executor, "prepare").run()
    if not tasks_finished(logs, plan.tasks):
        print(f"tasks submitted or unfinished (logs in {logs}); when they are done, rerun the same command to publish "
              f"{output}")
        return None
    source_metadata = {
        "paths": paths,
        "format": fmt,
        "text_field": source.text_field,
        "prompt_field": source.prompt_field,
        "text_split": source.text_split,
        "on_bad_record": on_bad_record,
        "skipped_records": documents.bad_records.counts,
    }
    metadata = publish(work, destination, source_metadata)
    seconds = time.monotonic() - started
    speed = "" if resuming else f" in {seconds:.1f} s ({metadata['num_tokens'] / max(seconds, 1e-9):,.0f} tokens/s)"
    print(
        f"wrote {metadata['num_rows']} rows ({metadata['num_tokens']} tokens, {metadata['num_documents']} documents) "
        f"in {len(metadata['shards'])} shards to {output} with {plan.tasks} task(s){speed}"
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
    add_executor_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The command line; returns the written metadata (None while tasks are left to run, e.g. on Slurm)."""
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
        on_bad_record=args.on_bad_record, executor=args,
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
