"""The plan of a prepare run in tasks: which input files each task packs, and the work folder that makes it resumable.

Task split: the files (in `resolve_paths` order) are cut into `tasks` contiguous blocks balanced by bytes; file
i, whose bytes span [c_i, c_i + s_i) of the S bytes of all files, goes to task floor((2 c_i + s_i) tasks / 2 S),
the task holding its middle byte. Blocks are contiguous, so the tasks' rows in task order keep the documents in
file order; a task may get no file (more tasks than files).

Work folder `.<output name>.prepare/` beside the output:
    plan.json              the plan (settings, files with size and mtime, the task split); a rerun must match it
    logs/                  datatrove's logs and completion markers (a finished task is not run again)
    task-NNNNN/            task NNNNN's shards rows-MMMMM.array_record and task.json (its counts), once finished
It is removed once the output is published.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PLAN_FILE = "plan.json"
TASK_FILE = "task.json"


@dataclass(frozen=True)
class PreparePlan:
    """Everything that decides the rows of a prepare run in tasks (recorded in plan.json)."""

    tokenizer: str
    tokenizer_fingerprint: str
    seq_len: int
    rows_per_shard: int
    format: str
    text_field: str
    prompt_field: str | None
    text_split: str
    on_bad_record: str
    files: list[dict[str, Any]]  # {"path", "bytes", "mtime_ns"} in resolve_paths order
    task_files: list[list[str]]  # per task (rank), its files in order

    @property
    def tasks(self) -> int:
        return len(self.task_files)


def split_files(paths: list[str], sizes: list[int], tasks: int) -> list[list[str]]:
    """`paths` in `tasks` contiguous blocks balanced by `sizes` (bytes); see the module docstring."""
    if tasks < 1:
        raise ValueError(f"--tasks must be >= 1, got {tasks}.")
    total = sum(sizes)
    blocks: list[list[str]] = [[] for _ in range(tasks)]
    start = 0
    for path, size in zip(paths, sizes):
        rank = (2 * start + size) * tasks // (2 * total) if total else 0
        blocks[min(rank, tasks - 1)].append(path)
        start += size
    return blocks


def file_entries(paths: list[str]) -> list[dict[str, Any]]:
    """`{"path", "bytes", "mtime_ns"}` of each file: what a rerun compares to tell that an input changed."""
    entries = []
    for path in paths:
        stat = os.stat(path)
        entries.append({"path": path, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return entries


def work_directory(output: str | Path) -> Path:
    """The work folder of a prepare run writing `output`."""
    output = Path(output)
    return output.parent / f".{output.name}.prepare"


def task_directory(work: Path, rank: int) -> Path:
    """Where task `rank` leaves its shards and task.json once finished."""
    return work / f"task-{rank:05d}"


def start_or_resume(work: Path, plan: PreparePlan) -> bool:
    """Write `plan` into a new work folder, or check that the existing one holds the same plan.

    Returns True when resuming. Raises ValueError naming what differs when the folder holds another plan
    (other settings, or input files that changed since): its finished tasks would not match this run.
    """
    path = work / PLAN_FILE
    wanted = asdict(plan)
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != wanted:
            differs = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
            raise ValueError(
                f"{work} holds an unfinished prepare with other {', '.join(differs)} (input files changed, or "
                "other options). Rerun it with the same options and unchanged files, or delete that folder to start over."
            )
        return True
    work.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(wanted, indent=2) + "\n")
    temporary.rename(path)
    return False


def read_plan(work: Path) -> PreparePlan:
    """The plan recorded in `work`."""
    return PreparePlan(**json.loads((work / PLAN_FILE).read_text()))
