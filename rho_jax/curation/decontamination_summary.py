"""The summary of a decontamination run, from its per-task report files: summary.json and summary.md.

Totals over tasks: documents read, kept, contaminated (with at least one n-gram hit), n-gram hits, dropped
documents per reason, cut documents and characters cut. Per evaluation task: its items in the index, the
items found in some document (with their idx), the documents that hold them, and, with the embedding
stage, the items with a near-duplicate document. `items_uncovered` counts the items too short to have an
n-gram (they can never be found).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rho_jax.curation.eval_index import NGramIndex, uncovered_items
from rho_jax.curation.ngrams import DecontaminationError

__all__ = ["summarize", "write_summary"]

_TOTALS = ("documents", "kept_documents", "contaminated_documents", "ngram_hits", "cut_documents", "characters",
           "characters_cut")


def _rows(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob("[0-9]*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def summarize(output: Path, index: NGramIndex, tasks: int) -> dict[str, Any]:
    """The summary of the run in `output` (all `tasks` tasks must be finished)."""
    output = Path(output)
    counts_files = [output / "report" / f"{rank:05d}.counts.json" for rank in range(tasks)]
    missing = [path.name for path in counts_files if not path.is_file()]
    if missing:
        raise DecontaminationError(f"{output}: {len(missing)} of {tasks} tasks have not finished (no report/"
                                   f"{missing[0]}); rerun or wait for them, then summarize")
    totals: Counter = Counter()
    dropped: Counter = Counter()
    for path in counts_files:
        counts = json.loads(path.read_text())
        totals.update({key: counts.get(key, 0) for key in _TOTALS})
        dropped.update({key.removeprefix("dropped_"): value for key, value in counts.items() if key.startswith("dropped_")})
    found: dict[str, set] = defaultdict(set)
    documents: dict[str, set] = defaultdict(set)
    for row in _rows(output / "report"):
        found[row["task"]].add(row["idx"])
        documents[row["task"]].add(row["doc_id"])
    near: dict[str, set] = defaultdict(set)
    for row in _rows(output / "near_duplicates"):
        near[row["task"]].add(row["idx"])
    uncovered = Counter(item.task for item in uncovered_items(index))
    per_task = {}
    for task, size in index.task_sizes().items():
        per_task[task] = {"items": size, "items_uncovered": uncovered[task], "contaminated_items": len(found[task]),
                          "contaminated_idx": sorted(found[task], key=str), "documents": len(documents[task])}
        if (output / "near_duplicates").is_dir():
            per_task[task]["near_duplicate_items"] = len(near[task])
    return {**{key: totals[key] for key in _TOTALS}, "dropped": dict(sorted(dropped.items())), "tasks": per_task}


def write_summary(output: Path, summary: dict[str, Any], header: dict[str, Any]) -> None:
    """summary.json (`header` + `summary`) and summary.md in `output`."""
    output = Path(output)
    (output / "summary.json").write_text(json.dumps({**header, **summary}, indent=1) + "\n")
    lines = ["# Decontamination summary", ""]
    lines += [f"- {key}: `{value}`" for key, value in header.items()]
    lines += ["", "| documents | kept | contaminated | n-gram hits | cut | characters cut |", "|---|---|---|---|---|---|",
              f"| {summary['documents']} | {summary['kept_documents']} | {summary['contaminated_documents']} | "
              f"{summary['ngram_hits']} | {summary['cut_documents']} | {summary['characters_cut']} |", ""]
    if summary["dropped"]:
        lines += ["Dropped: " + ", ".join(f"{reason} {count}" for reason, count in summary["dropped"].items()), ""]
    near = any("near_duplicate_items" in row for row in summary["tasks"].values())
    lines += ["| task | items | too short to index | contaminated items | documents |"
              + (" near-duplicate items |" if near else ""),
              "|---|---|---|---|---|" + ("---|" if near else "")]
    for task, row in summary["tasks"].items():
        share = f" ({100 * row['contaminated_items'] / row['items']:.1f}%)" if row["items"] else ""
        lines.append(f"| {task} | {row['items']} | {row['items_uncovered']} | {row['contaminated_items']}{share} | "
                     f"{row['documents']} |" + (f" {row['near_duplicate_items']} |" if near else ""))
    (output / "summary.md").write_text("\n".join(lines) + "\n")
