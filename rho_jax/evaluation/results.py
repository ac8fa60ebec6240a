"""Task results, and `results.json` / `results.md` of an evaluation: accuracy per task in the paper's Table-1 format.

The table's columns are the evaluated tasks, Table-1 tasks first in the paper's order, then any
others; AVG is the mean over the columns shown. When the model is one the paper reports, its
Table-1 row follows for reference (same columns; AVG over those the paper has).
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from rho_jax.evaluation.paper_table import TABLE1_HEADERS, TABLE1_TASKS, paper_rows_for
from rho_jax.integrity import write_json_atomic, write_text_atomic

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """One task's outcome: accuracy in percent over `num_samples`, grading timeouts and empty predictions."""

    task: str
    num_samples: int
    num_correct: int
    timeouts: int
    empty: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.num_correct / self.num_samples if self.num_samples else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": round(self.accuracy, 2), "num_samples": self.num_samples, "num_correct": self.num_correct,
                "timeouts": self.timeouts, "empty": self.empty}


def ordered_tasks(tasks: list[str]) -> list[str]:
    """Table-1 tasks in the paper's order, then the others in the order given."""
    return [t for t in TABLE1_TASKS if t in tasks] + [t for t in tasks if t not in TABLE1_TASKS]


def _row(label: str, scores: dict[str, float | None], columns: list[str]) -> str:
    values = [scores.get(task) for task in columns]
    known = [v for v in values if v is not None]
    average = statistics.fmean(known) if known else None
    cells = ["-" if v is None else f"{v:.1f}" for v in [*values, average]]
    return f"| {label} | " + " | ".join(cells) + " |"


def markdown(model: str, results: list[TaskResult], settings: dict[str, Any]) -> str:
    columns = ordered_tasks([r.task for r in results])
    ours = {r.task: r.accuracy for r in results}
    lines = [
        f"# Few-shot evaluation of `{model}`",
        "",
        "| model | " + " | ".join(TABLE1_HEADERS.get(t, t) for t in columns) + " | AVG |",
        "|---|" + "---|" * (len(columns) + 1),
        _row(f"`{Path(model).name or model}` (this run)", ours, columns),
        *(_row(f"{label} (Rho-1 Table 1)", row, columns) for label, row in paper_rows_for(model).items()),
        "",
        "| task | samples | correct | accuracy | grading timeouts | empty predictions |",
        "|---|---|---|---|---|---|",
        *(f"| {r.task} | {r.num_samples} | {r.num_correct} | {r.accuracy:.1f} | {r.timeouts} | {r.empty} |"
          for r in sorted(results, key=lambda r: columns.index(r.task))),
        "",
        "Settings: " + ", ".join(f"{key}={value}" for key, value in settings.items()),
        "",
    ]
    return "\n".join(lines)


def write_results(out: Path, model: str, results: list[TaskResult], settings: dict[str, Any]) -> dict[str, Any]:
    """Write results.json and results.md to `out`; returns the JSON document."""
    accuracies = [r.accuracy for r in results]
    document = {
        "model": model,
        "settings": settings,
        "tasks": {r.task: r.to_json() for r in results},
        "average": round(statistics.fmean(accuracies), 2) if accuracies else None,
        "paper": paper_rows_for(model),
    }
    write_json_atomic(out / RESULTS_JSON, document)
    write_text_atomic(out / RESULTS_MD, markdown(model, results, settings))
    return document
