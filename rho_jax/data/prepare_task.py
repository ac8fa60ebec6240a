"""One prepare task as a datatrove pipeline step: tokenize and pack its files (`prepare_plan`) into its own shards.

Task `rank` reads its files in order through `encode_document` + `pack_documents` (as online training does),
cuts the rows into shards of `rows_per_shard` rows (its last row padded, its last shard possibly short) and
writes them with task.json (`{"num_rows", "num_tokens", "num_documents", "shards"}`) into a staging folder that
becomes `task-NNNNN/` when complete. A task that was killed starts over: its partial staging folder is replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from array_record.python.array_record_module import ArrayRecordWriter
from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from rho_jax.data import prepared
from rho_jax.data.config import SourceConfig
from rho_jax.data.packing import Row, source_rows
from rho_jax.data.prepare_plan import TASK_FILE, PreparePlan, read_plan, task_directory
from rho_jax.data.sources import Document, DocumentSource, open_source
from rho_jax.data.tokenizer import load_tokenizer, tokenizer_fingerprint


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


def write_shards(rows: Iterable[Row], directory: Path, rows_per_shard: int, progress: _Progress) -> tuple[list[str], int]:
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


@contextlib.contextmanager
def _quiet_data_logger() -> Iterator[None]:
    """Silence the "rho_jax.data" logger: the driver has already logged the records a task skips."""
    data_logger = logging.getLogger("rho_jax.data")
    disabled, data_logger.disabled = data_logger.disabled, True
    try:
        yield
    finally:
        data_logger.disabled = disabled


def task_documents(plan: PreparePlan, rank: int) -> DocumentSource | None:
    """The documents of task `rank` (bad records as `plan.on_bad_record` says), or None if its files hold none."""
    files = plan.task_files[rank]
    if not files:
        return None
    source = SourceConfig(paths=tuple(files), format=plan.format, text_field=plan.text_field,
                          prompt_field=plan.prompt_field, text_split=plan.text_split)
    try:
        with _quiet_data_logger():
            return open_source(source, plan.on_bad_record)
    except ValueError as e:
        if "holds no documents" in str(e):  # open_source's refusal; blank lines or skipped records: no row
            return None
        raise


def run_task(work: Path, rank: int) -> dict[str, Any]:
    """Tokenize and pack task `rank` of the plan in `work` into `task-NNNNN/`; returns its task.json."""
    plan = read_plan(work)
    tokenizer = load_tokenizer(plan.tokenizer)
    if tokenizer_fingerprint(tokenizer) != plan.tokenizer_fingerprint:
        raise ValueError(f"the tokenizer {plan.tokenizer} changed since this prepare was planned (fingerprint "
                         f"{tokenizer_fingerprint(tokenizer)}, planned {plan.tokenizer_fingerprint}); delete {work} "
                         "to start over.")
    final = task_directory(work, rank)
    staging = final.with_name(final.name + ".partial")
    for leftover in (final, staging):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir()
    documents = task_documents(plan, rank)
    count = 0 if documents is None else len(documents)
    with tqdm(total=count, unit="doc", desc=f"prepare task {rank}") as bar:
        progress = _Progress(bar)
        shards: list[str] = []
        num_rows = 0
        if documents is not None:
            rows = source_rows(documents, tokenizer, plan.seq_len + 1, lambda ds: ds.map(progress.document))
            shards, num_rows = write_shards(rows, staging, plan.rows_per_shard, progress)
    summary = {"num_rows": num_rows, "num_tokens": progress.tokens, "num_documents": count, "shards": shards}
    (staging / TASK_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    staging.rename(final)
    return summary


class PrepareTask(PipelineStep):
    """datatrove step: runs `run_task` for the executor's rank (the executor's task count must be the plan's)."""

    name = "tokenize and pack"
    type = "rho_jax.prepare"

    def __init__(self, work: str | Path):
        super().__init__()
        self.work = str(work)

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        planned = read_plan(Path(self.work)).tasks
        if world_size != planned:
            raise ValueError(f"this executor runs {world_size} tasks, the plan in {self.work} has {planned}.")
        with self.track_time(unit="task"):
            summary = run_task(Path(self.work), rank)
        self.stat_update("documents", value=summary["num_documents"], unit="task")
        self.stat_update("rows", value=summary["num_rows"], unit="task")
        self.stat_update("tokens", value=summary["num_tokens"], unit="task")
