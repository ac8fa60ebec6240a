"""Few-shot math tasks: from a task spec and its data, the samples to evaluate, prompts included.

`build_samples` reproduces the paper's evaluation harness (ToRA/DeepSeekMath protocol) sample by
sample: rows are ordered by their `idx` field (or numbered in file order when the rows have none),
the question and ground truth are read with the spec's template and rule (`task_rules`), and the
prompt is the exemplars plus the query (`prompts`). Everything is checked before any generation:
missing files, rows without the fields the spec reads, malformed exemplar files.

Task specs are YAML files (`task_config`); the shipped ones are in `task_specs/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rho_jax.evaluation import task_rules
from rho_jax.evaluation.prompts import build_prompt, read_exemplar_file, render_query
from rho_jax.evaluation.task_config import DataSource, TaskError, TaskSpec, load_task, shipped_task_names
from rho_jax.jsonl import Line, json_objects

__all__ = ["Sample", "TaskError", "TaskSpec", "build_samples", "load_task", "shipped_task_names"]


@dataclass
class Sample:
    """One evaluation sample: `gt` is normalized as the harness stores it; `fields` holds gt_cot (when the
    task has one) and the spec's copy_fields present in the row, for the output files."""

    idx: int
    question: str
    gt: str
    prompt: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    where: Line | str  # printed in error messages
    data: dict[str, Any]


def _read_jsonl(path: Path) -> list[_Row]:
    return [_Row(where, data) for where, data in json_objects(path, TaskError)]


def _read_hf(source: DataSource, task: str) -> list[_Row]:
    try:
        import datasets
    except ImportError:
        raise TaskError(f"task {task!r} reads the {source.describe()}, which needs the `datasets` package "
                        "(pip install datasets); or download the data and use a `file:` source") from None
    try:
        dataset = datasets.load_dataset(source.hf, source.config, split=source.split)
    except Exception as err:  # offline, unknown id or split: all end the same way
        raise TaskError(f"task {task!r}: could not load the {source.describe()} ({type(err).__name__}: {err}). "
                        "Offline? Download the data and use a `file:` source under --data-dir") from None
    return [_Row(f"{source.describe()}, row {number}", dict(row)) for number, row in enumerate(dataset)]


def load_rows(source: DataSource, data_dir: Path | None, task: str) -> list[_Row]:
    """The source's rows in the harness's order: sorted by `idx` when the first row has one, else numbered."""
    if source.file is not None:
        if data_dir is None:
            raise TaskError(f"task {task!r} reads {source.file} under the data directory; give --data-dir")
        path = Path(data_dir) / source.file
        if not path.is_file():
            raise TaskError(f"task {task!r}: data file {path} does not exist ({source.file} under --data-dir {data_dir})")
        rows = _read_jsonl(path)
        if not rows:
            raise TaskError(f"task {task!r}: data file {path} has no rows")
    else:
        rows = _read_hf(source, task)
        if not rows:
            raise TaskError(f"task {task!r}: the {source.describe()} has no rows")
    if "idx" not in rows[0].data:
        return [_Row(row.where, {"idx": number, **row.data}) for number, row in enumerate(rows)]
    seen: dict[int, str] = {}
    for row in rows:
        idx = row.data.get("idx")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TaskError(f"{row.where}: `idx` must be an integer (the first row has one, so every row needs one), "
                            f"got {idx!r}")
        if idx in seen:
            raise TaskError(f"{row.where}: idx {idx} repeats the idx of {seen[idx]}")
        seen[idx] = row.where
    return sorted(rows, key=lambda row: row.data["idx"])


class _RowReader:
    """Reads one spec's question and ground truth from rows, checking that each row has the fields it needs."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.template = task_rules.parse_template(spec.question)
        self.needed = list(dict.fromkeys([*task_rules.template_fields(self.template), spec.gt.field,
                                          *([spec.gt.cot_field] if spec.gt.cot_field else [])]))

    def read(self, row: _Row) -> tuple[str, str, str | None]:
        """(question, gt, gt_cot or None) of `row`."""
        missing = [name for name in self.needed if name not in row.data]
        if missing:
            raise TaskError(f"{row.where}: row has no field {missing[0]!r} (task {self.spec.name!r} reads "
                            f"{', '.join(self.needed)}; the row has {', '.join(map(str, row.data))})")
        try:
            cot, gt = task_rules.ground_truth(self.spec.gt.rule, self.spec.gt.field, self.spec.gt.cot_field, row.data)
            question = task_rules.render(self.template, row.data)
        except task_rules.RowError as err:
            raise TaskError(f"{row.where}: {err} (task {self.spec.name!r})") from None
        if not question.strip():
            raise TaskError(f"{row.where}: the question is empty (template {self.spec.question!r})")
        return task_rules.finish_question(question, gt), gt, cot


def _exemplar_blocks(spec: TaskSpec, reader: _RowReader, data_dir: Path | None, fewshot_dir: Path | None) -> list[str]:
    blocks = []
    if spec.fewshot_file is not None:
        if fewshot_dir is None:
            raise TaskError(f"task {spec.name!r} uses the exemplar file {spec.fewshot_file}; give --fewshot-dir")
        text, _ = read_exemplar_file(Path(fewshot_dir) / spec.fewshot_file, spec.query_template, spec.name)
        blocks.append(text)
    train = spec.fewshot_from_train
    if train is not None:
        rows = load_rows(train.source, data_dir, spec.name)
        if len(rows) < train.n:
            raise TaskError(f"task {spec.name!r}: fewshot_from_train.n is {train.n} but the {train.source.describe()} "
                            f"has only {len(rows)} rows")
        for row in rows[: train.n]:
            question, gt, cot = reader.read(row)
            solution = train.solution_template.format(cot="" if cot is None else cot, gt=gt)
            blocks.append((render_query(spec.query_template, question) + solution).strip())
    return blocks


def build_samples(spec: TaskSpec, *, data_dir: Path | None, fewshot_dir: Path | None,
                  limit: int | None = None) -> list[Sample]:
    """Every sample of `spec` (the first `limit` in idx order when given), with its prompt.

    Raises TaskError for anything that would stop the evaluation: a missing data or exemplar file,
    a row without a field the spec reads, a malformed exemplar file, a bad `limit`.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise TaskError(f"limit must be a positive integer or None, got {limit!r}")
    reader = _RowReader(spec)
    rows = load_rows(spec.source, data_dir, spec.name)
    blocks = _exemplar_blocks(spec, reader, data_dir, fewshot_dir)
    samples = []
    for row in rows[:limit]:
        question, gt, cot = reader.read(row)
        fields: dict[str, Any] = {} if cot is None else {"gt_cot": cot}
        fields.update({name: row.data[name] for name in spec.copy_fields if name in row.data})
        samples.append(Sample(idx=row.data["idx"], question=question, gt=gt,
                              prompt=build_prompt(blocks, spec.query_template, question), fields=fields))
    return samples

