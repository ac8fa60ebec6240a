"""Re-grade the paper harness's published completions with rho_jax and compare sample by sample.

    python scripts/grading_conformance.py --published DIR

DIR holds the harness's output folders `gsm8k/` and `minerva_math/` (MATH500), each with one
`*.jsonl` of samples (`idx`, `gt`, `code[0]` = the completion, `pred[0]`, `score[0]`) and its
`*_metrics.json` (`acc`). For every sample the answer is extracted again from the completion
(`answers.extract_answer`) and graded against the file's `gt` (`grading.grade_answers`); the script
prints how many extracted answers and verdicts agree with the published ones, both accuracies, and
every sample that differs. Exit status 1 if any verdict differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rho_jax.evaluation.answers import extract_answer
from rho_jax.evaluation.grading import HARNESS_TIMEOUT_S, grade_answers

TASKS = {"gsm8k": "number", "minerva_math": "latex"}  # harness output folder -> answer kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--published", type=Path, required=True, help="folder holding the harness's gsm8k/ and minerva_math/")
    parser.add_argument("--timeout-s", type=float, default=HARNESS_TIMEOUT_S, help="time limit per comparison (harness: 3)")
    parser.add_argument("--workers", type=int, default=None, help="grading processes (default: one per CPU)")
    return parser


def task_files(folder: Path) -> tuple[Path, Path]:
    """(samples jsonl, metrics json) of one harness output folder."""
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a folder; --published must contain {' and '.join(TASKS)}")
    metrics = sorted(folder.glob("*_metrics.json"))
    samples = sorted(p for p in folder.glob("*.jsonl"))
    if len(samples) != 1 or len(metrics) != 1:
        raise SystemExit(f"error: {folder} must hold exactly one *.jsonl and one *_metrics.json, found {samples + metrics}")
    return samples[0], metrics[0]


def compare_task(name: str, folder: Path, timeout_s: float, workers: int | None) -> bool:
    """Print the comparison for one task; True if every verdict agrees."""
    samples_path, metrics_path = task_files(folder)
    rows = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    published_acc = json.loads(metrics_path.read_text(encoding="utf-8"))["acc"]
    preds = [extract_answer(row["code"][0], TASKS[name]) for row in rows]
    grades = grade_answers(preds, [row["gt"] for row in rows], timeout_s=timeout_s, workers=workers)
    published_preds = [row["pred"][0] or "" for row in rows]  # the harness stores None for an empty completion
    same_pred = sum(p == q for p, q in zip(preds, published_preds))
    same_verdict = sum(ours == row["score"][0] for ours, row in zip(grades.correct, rows))
    print(f"== {name} ({samples_path.name}, {len(rows)} samples)")
    print(f"extracted answers identical: {same_pred}/{len(rows)}")
    print(f"verdicts identical:          {same_verdict}/{len(rows)}")
    print(f"accuracy: ours {grades.accuracy:.1f}, published {published_acc}")
    slow = [row["idx"] for row, t, c in zip(rows, grades.timed_out, grades.crashed) if t or c]
    print(f"time-outs: {grades.timeouts}, crashed workers: {grades.crashes}" + (f" (idx {slow})" if slow else ""))
    for row, pred, ok, timed_out in zip(rows, preds, grades.correct, grades.timed_out):
        if pred != (row["pred"][0] or "") or ok != row["score"][0]:
            note = " (timed out)" if timed_out else ""
            print(
                f"  idx {row['idx']}: gt {row['gt']!r} | published {row['pred'][0]!r} -> {row['score'][0]} | "
                f"ours {pred!r} -> {ok}{note}"
            )
    return same_verdict == len(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    agree = [compare_task(name, args.published / name, args.timeout_s, args.workers) for name in TASKS]
    return 0 if all(agree) else 1


if __name__ == "__main__":
    sys.exit(main())
