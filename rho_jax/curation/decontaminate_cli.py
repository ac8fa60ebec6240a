"""`python -m rho_jax.curate decontaminate index|run|summarize`: n-gram decontamination against the evaluation sets.

    index     --tasks gsm8k,math --data-dir DIR [--fewshot-dir DIR] [--limit N] --output index.npz
              [--n 13] [--fold-digits]
    index     --jsonl FILE --field question[,answer] [--task-name NAME] --output index.npz [--n 13] [--fold-digits]
    run       --index index.npz --input 'corpus/*.jsonl' --output OUT [--mode report|drop|cut]
              [--window 200] [--max-hits 10] [--min-piece 200] [--text-field text] [--id-field id]
              [--n N] [--fold-digits | --no-fold-digits] [--near-duplicates COSINE [--embed bow|model:PATH|module:fn]]
              [executor options]
    summarize --output OUT

`index` hashes every word n-gram of the evaluation items (`rho_jax.curation.eval_index`). `run` reads the
corpus (a folder of JSONL shards or a glob; gzip/zstd inferred) and writes kept documents, excluded ones,
the per-task reports and summary.json/.md into OUT (`rho_jax.curation.decontamination_pipeline`); --n and
--fold-digits, when given, must be the index's own. Rerunning the same command resumes (finished tasks are
skipped). With `--executor slurm` the command submits the job array and returns: run `summarize` when the
jobs are done. Executor options: `rho_jax.executors`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rho_jax.curation.decontamination import MODES, CutSettings
from rho_jax.curation.decontamination_pipeline import (
    RunSettings,
    build_pipeline,
    check_corpus,
    check_run_settings,
    file_sha256,
    split_input,
)
from rho_jax.curation.decontamination_summary import summarize, write_summary
from rho_jax.curation.eval_index import NGramIndex, build_index, items_from_jsonl, items_from_tasks, uncovered_items
from rho_jax.curation.near_duplicates import resolve_embedder
from rho_jax.curation.ngrams import DecontaminationError, NGramSettings
from rho_jax.executors import add_executor_options, make_executor, tasks_finished

__all__ = ["build_parser", "main"]


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return names


def cmd_index(args: argparse.Namespace) -> None:
    settings = NGramSettings(args.n, args.fold_digits)
    if args.jsonl is not None:
        if not args.field:
            raise DecontaminationError("--jsonl needs --field (the fields to index, comma-separated)")
        items = items_from_jsonl(args.jsonl, args.field, args.task_name)
    else:
        items = items_from_tasks(args.tasks, data_dir=args.data_dir, fewshot_dir=args.fewshot_dir, limit=args.limit)
    index = build_index(items, settings)
    index.save(args.output)
    short = uncovered_items(index)
    sizes = ", ".join(f"{task} {size}" for task, size in index.task_sizes().items())
    print(f"{len(index)} distinct {settings.n}-grams of {len(items)} items ({sizes}) -> {args.output}")
    if short:
        print(f"note: {len(short)} items have fewer than {settings.n} words and cannot be found "
              f"(first: {short[0].task}:{short[0].idx})")


def _index_for_run(args: argparse.Namespace) -> NGramIndex:
    index = NGramIndex.load(args.index)
    wanted = NGramSettings(index.settings.n if args.n is None else args.n,
                           index.settings.fold_digits if args.fold_digits is None else args.fold_digits)
    index.check_settings(wanted, f"index {args.index}")
    return index


def _finish(output: Path, index: NGramIndex, settings: RunSettings) -> None:
    summary = summarize(output, index, settings.tasks)
    header = {"index": settings.index, "input": settings.input, "mode": settings.mode, "n": index.settings.n,
              "fold_digits": index.settings.fold_digits}
    write_summary(output, summary, header)
    totals = {key: summary[key] for key in ("documents", "kept_documents", "contaminated_documents", "dropped")}
    print(json.dumps(totals))
    print(f"summary: {output / 'summary.md'}")


def cmd_run(args: argparse.Namespace) -> None:
    if args.embed is not None and args.near_duplicates is None:
        raise DecontaminationError("--embed chooses the embedding of the near-duplicate stage: give --near-duplicates too")
    if args.near_duplicates is not None:
        resolve_embedder(args.embed or "bow")
    index = _index_for_run(args)
    folder, pattern = split_input(args.input)
    files = check_corpus(folder, pattern, args.text_field)
    settings = RunSettings(index=str(Path(args.index).resolve()), index_sha256=file_sha256(args.index),
                           input=args.input, mode=args.mode, tasks=args.tasks,
                           cut=CutSettings(args.window, args.max_hits, args.min_piece), text_key=args.text_field,
                           id_key=args.id_field, near_duplicate_threshold=args.near_duplicates, embed=args.embed or "bow")
    pipeline = build_pipeline(settings, args.output)
    check_run_settings(args.output, settings)
    print(f"{len(files)} input files, {args.tasks} tasks, mode {args.mode}, index of {len(index)} n-grams")
    logs = Path(args.output) / "logs"
    make_executor(pipeline, logs, args, "decontaminate").run()
    if tasks_finished(logs, args.tasks):
        _finish(Path(args.output), index, settings)
    else:
        print(f"tasks submitted; when they are done: python -m rho_jax.curate decontaminate summarize --output {args.output}")


def cmd_summarize(args: argparse.Namespace) -> None:
    run_file = Path(args.output) / "run.json"
    if not run_file.is_file():
        raise DecontaminationError(f"{args.output} holds no decontamination run (no run.json)")
    recorded = json.loads(run_file.read_text())
    recorded["cut"] = CutSettings(**recorded["cut"])
    settings = RunSettings(**recorded)
    _finish(Path(args.output), NGramIndex.load(settings.index), settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.curate decontaminate", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="hash the evaluation sets' word n-grams into an index file")
    source = index.add_mutually_exclusive_group(required=True)
    source.add_argument("--tasks", type=_names, help="comma-separated shipped task names or task YAML files")
    source.add_argument("--jsonl", type=Path, help="any JSONL of evaluation items")
    index.add_argument("--field", type=_names, help="with --jsonl: the fields to index, comma-separated")
    index.add_argument("--task-name", help="with --jsonl: the task name in reports (default: the file's name)")
    index.add_argument("--data-dir", type=Path, help="directory with the tasks' test files")
    index.add_argument("--fewshot-dir", type=Path, help="directory with the tasks' exemplar files")
    index.add_argument("--limit", type=int, help="only the first N samples of each task")
    index.add_argument("--output", type=Path, required=True, help="index file to write (.npz)")
    index.add_argument("--n", type=int, default=13, help="words per n-gram")
    index.add_argument("--fold-digits", action="store_true", help="every digit becomes 0 before hashing")
    index.set_defaults(func=cmd_index)

    run = commands.add_parser("run", help="find (and drop or cut) evaluation n-grams in a JSONL corpus")
    run.add_argument("--index", type=Path, required=True)
    run.add_argument("--input", required=True, help="folder of JSONL shards, or a glob such as 'corpus/*.jsonl.gz'")
    run.add_argument("--output", type=Path, required=True)
    run.add_argument("--mode", choices=MODES, default="report")
    run.add_argument("--window", type=int, default=200, help="cut: characters removed on each side of a hit")
    run.add_argument("--max-hits", type=int, default=10, help="cut: drop a document with more hits than this")
    run.add_argument("--min-piece", type=int, default=200, help="cut: shortest piece of text kept")
    run.add_argument("--text-field", default="text")
    run.add_argument("--id-field", default="id")
    run.add_argument("--n", type=int, default=None, help="must equal the index's n (default: the index's)")
    run.add_argument("--fold-digits", action=argparse.BooleanOptionalAction, default=None,
                     help="must equal the index's setting (default: the index's)")
    run.add_argument("--near-duplicates", type=float, default=None, metavar="COSINE",
                     help="also report documents whose embedding has at least this cosine with an item's")
    run.add_argument("--embed", default=None,
                     help="near-duplicate embedding: bow (hashed bag of words, the default), model:PATH (a rho_jax or HF "
                          "model's mean-pooled hidden states) or module:callable")
    add_executor_options(run)
    run.set_defaults(func=cmd_run)

    summary = commands.add_parser("summarize", help="write summary.json/.md of a finished run (after slurm jobs)")
    summary.add_argument("--output", type=Path, required=True)
    summary.set_defaults(func=cmd_summarize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
