"""Few-shot chain-of-thought math evaluation, as in the Rho-1 paper (its Table 1 protocol).

    python -m rho_jax.evaluate run --model M --tasks gsm8k,math --data-dir DIR --fewshot-dir DIR --output OUT
                                   [--limit N] [--max-new-tokens N] [--batch-size B] [--dtype bfloat16]
                                   [--strict-percent] [--overwrite]
    python -m rho_jax.evaluate grade --task gsm8k --completions FILE [--output FILE] [--strict-percent]
    python -m rho_jax.evaluate tasks

`run` generates greedily (up to each task's max_new_tokens, 1024 by default) with the task's stop
strings, grades every completion, and writes OUT/<task>.jsonl (every sample), OUT/results.json and
OUT/results.md (accuracy per task, the average, the paper's row when the model is one it reports).
Rerunning the same command resumes: generations already written are not made again.

`grade` re-grades existing completions: this command's own task files or the paper harness's
output files (`code[0]` is the completion, `gt` the ground truth), and compares with their stored
verdicts (`score[0]`) when present.

`--strict-percent` turns off the harness's percent leniency (a prediction also counts as equal
when it is 100x or 1/100x the answer), which the default reproduces for comparability.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rho_jax.evaluation.answers import extract_answer
from rho_jax.evaluation.grading import grade_answers
from rho_jax.evaluation.results import write_results
from rho_jax.evaluation.runner import evaluate_task, sampling_for
from rho_jax.evaluation.sample_files import ResumeMismatch, check_settings, write_jsonl
from rho_jax.evaluation.tasks import TaskError, build_samples, load_task, shipped_task_names
from rho_jax.generation import SamplingParams, load_generator
from rho_jax.training.config import ConfigError
from rho_jax.training.run_dir import read_jsonl

__all__ = ["build_parser", "main"]


def _task_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of task names or YAML files")
    return names


def cmd_run(args: argparse.Namespace) -> None:
    # Everything that can be wrong with the tasks is found before the model is loaded.
    specs = [load_task(name) for name in args.tasks]
    samples = {spec.name: build_samples(spec, data_dir=args.data_dir, fewshot_dir=args.fewshot_dir, limit=args.limit)
               for spec in specs}
    settings: dict[str, Any] = {"model": args.model, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
                                "temperature": 0.0}
    check_settings(args.output, settings, args.overwrite)
    generator = load_generator(args.model, tokenizer=args.tokenizer, dtype=args.dtype, batch_size=args.batch_size)
    results = []
    for spec in specs:
        params = sampling_for(spec, args.max_new_tokens, SamplingParams())
        print(f"{spec.name}: {len(samples[spec.name])} samples, up to {params.max_new_tokens} new tokens", file=sys.stderr)
        result = evaluate_task(generator, spec, samples[spec.name], params, out=args.output,
                               percent_leniency=not args.strict_percent)
        print(f"{spec.name}: accuracy {result.accuracy:.1f} ({result.num_correct}/{result.num_samples})", file=sys.stderr)
        results.append(result)
    write_results(args.output, args.model, results,
                  {**settings, "limit": args.limit, "percent_leniency": not args.strict_percent})
    print((args.output / "results.md").read_text())


def _completion_of(row: dict[str, Any], where: str) -> str:
    if "code" in row and row["code"]:
        return row["code"][0]
    if "completion" in row:
        return row["completion"]
    raise ValueError(f"{where}: no completion (neither `code` as the harness writes it nor `completion`).")


def cmd_grade(args: argparse.Namespace) -> None:
    spec = load_task(args.task)
    if not args.completions.is_file():
        raise FileNotFoundError(f"--completions: {args.completions} does not exist.")
    rows = read_jsonl(args.completions)
    for number, row in enumerate(rows, 1):
        if "gt" not in row:
            raise ValueError(f"{args.completions}: record {number} has no `gt` (ground truth) field.")
    preds = [extract_answer(_completion_of(row, f"{args.completions}: record {n}"), spec.kind)
             for n, row in enumerate(rows, 1)]
    graded = grade_answers(preds, [str(row["gt"]) for row in rows], percent_leniency=not args.strict_percent)
    correct = sum(graded.correct)
    print(f"{spec.name}: accuracy {100 * correct / max(len(rows), 1):.1f} ({correct}/{len(rows)}), "
          f"{graded.timeouts} grading timeouts")
    stored = [bool(row["score"][0]) for row in rows if row.get("score")]
    if len(stored) == len(rows):
        differing = [row.get("idx", n) for n, (row, ours, theirs) in enumerate(zip(rows, graded.correct, stored))
                     if bool(ours) != theirs]
        print(f"verdicts equal to the stored ones: {len(rows) - len(differing)} of {len(rows)}"
              + (f"; differing idx: {differing[:50]}" if differing else ""))
    if args.output is not None:
        write_jsonl(args.output, [{**row, "pred": [pred], "score": [bool(ok)]}
                                  for row, pred, ok in zip(rows, preds, graded.correct)])
        print(f"wrote {args.output}")


def cmd_tasks(_args: argparse.Namespace) -> None:
    for name in shipped_task_names():
        spec = load_task(name)
        print(f"{name:10s} {spec.kind:7s} {spec.description}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.evaluate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate and grade few-shot tasks with a model")
    run.add_argument("--model", required=True,
                     help="HF directory or Hub id, rho_jax run directory, one of its checkpoints, or a rho_jax model dir")
    run.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's own)")
    run.add_argument("--tasks", required=True, type=_task_list,
                     help="comma-separated shipped task names (see `tasks`) or task YAML files")
    run.add_argument("--data-dir", type=Path, default=None, help="directory with the tasks' test files (<task>/test.jsonl)")
    run.add_argument("--fewshot-dir", type=Path, default=None, help="directory with the tasks' exemplar files")
    run.add_argument("--output", type=Path, required=True, help="output directory")
    run.add_argument("--limit", type=int, default=None, help="only the first N samples of each task")
    run.add_argument("--max-new-tokens", type=int, default=None, help="override every task's length limit")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default: float32)")
    run.add_argument("--strict-percent", action="store_true", help="no 100x / 1/100x leniency when grading")
    run.add_argument("--overwrite", action="store_true", help="discard results in --output made with other settings")
    run.set_defaults(func=cmd_run)
    grade = sub.add_parser("grade", help="re-grade existing completions (this command's or the harness's files)")
    grade.add_argument("--task", required=True, help="shipped task name or task YAML file")
    grade.add_argument("--completions", type=Path, required=True, help="JSONL with `code` or `completion`, and `gt`")
    grade.add_argument("--output", type=Path, default=None, help="write the re-graded rows here")
    grade.add_argument("--strict-percent", action="store_true", help="no 100x / 1/100x leniency when grading")
    grade.set_defaults(func=cmd_grade)
    tasks = sub.add_parser("tasks", help="list the shipped task specs")
    tasks.set_defaults(func=cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if getattr(args, "limit", None) is not None and args.limit <= 0:
        print("error: --limit must be a positive integer.", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except (TaskError, ResumeMismatch, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
