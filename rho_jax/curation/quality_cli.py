"""`python -m rho_jax.curate quality annotate|embed|train|filter`: phi-1's quality classifier, end to end.

    annotate --corpus PATH --model M --output labels.jsonl [--rubric edu|phi] [--sample 1000] [--seed 0]
             [--max-document-tokens 512] [--batch-size 8] [--tokenizer DIR] [--dtype float32] [--text-key text]
    annotate --labels human.jsonl --output labels.jsonl [--rubric edu|phi]
    embed    --corpus PATH --model M --output DIR [--pooling mean|last] [--max-length N] [--batch-size 32]
             [--tokenizer DIR] [--dtype float32] [--text-key text] [executor options]
    train    --embeddings DIR --output DIR [--kind random_forest|logistic|ridge] [--rubric edu|phi]
             [--threshold LABEL] [--test-fraction 0.2] [--seed 0]
    filter   --corpus PATH --model M --classifier DIR --output DIR [--threshold SCORE | --top-fraction F]
             [--batch-size 32] [--tokenizer DIR] [--text-key text] [executor options]

PATH: a JSONL file or a folder of JSONL shards (.gz/.zst read as such). annotate writes the labels (id, text,
label, annotation), `<output stem>.rejected.jsonl` (answers that were unparseable or out of range) and
`<output stem>.report.json` (counts); with --labels it checks a human/LLM labels file and writes it in the
same form. embed writes `NNNNN.jsonl.gz` shards with `NNNNN.embeddings.npy` beside each (see
`rho_jax.curation.embeddings`) and embed_report.json: embed the labels file to train on it. train writes
`classifier.skops` + `classifier.json` and the held-out report (report.json, report.md, scores.png,
heldout.jsonl). filter writes `kept/`, `excluded/` and filter_report.json/.md (plus `scored/` with
--top-fraction) under its output.

Executor options (`rho_jax.executors`): --executor local (default; --tasks, --workers) | slurm
(--partition, --time, --cpus-per-task, --mem-per-cpu-gb, --gpus-per-task, --env-command) | ray. Datatrove
logs go to `<output>/logs*`; rerunning a command skips the tasks that finished. With slurm the command
submits jobs and returns: run it again when they are done to write the report (and, with --top-fraction,
to submit the filtering stage).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.writers import JsonlWriter

from rho_jax.curation.annotate import RUBRICS, annotate_documents, read_labels, sample_documents, write_labels
from rho_jax.curation.classifier import KINDS, LabelScale, train_classifier
from rho_jax.curation.corpus import corpus_reader
from rho_jax.curation.embeddings import POOLINGS, EmbedDocuments, SaveEmbeddings, read_embedded_shards
from rho_jax.curation.quality_filter import (
    OUTPUT_FILENAME,
    cached_classifier,
    cutoff_pipeline,
    filter_counts,
    filter_pipeline,
    read_scores,
    scoring_pipeline,
    step_totals,
    top_fraction_cutoff,
)
from rho_jax.curation.quality_report import write_training_report
from rho_jax.executors import add_executor_options, make_executor, tasks_finished
from rho_jax.generation import load_generator


def _run(pipeline: list, logging_dir: Path, args: argparse.Namespace, job_name: str) -> bool:
    """Run (or submit) the pipeline; True once all its tasks are complete."""
    make_executor(pipeline, logging_dir, args, job_name).run()
    if tasks_finished(logging_dir, args.tasks):
        return True
    print(f"{job_name}: tasks submitted; run this command again when they are done (logs: {logging_dir}).")
    return False


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def cmd_annotate(args: argparse.Namespace) -> int:
    rubric = RUBRICS[args.rubric]
    output = Path(args.output)
    stem = output.with_suffix("")
    if args.labels is not None:
        records = read_labels(args.labels, rubric.scale, args.text_key)
        write_labels(output, records)
        print(f"{len(records)} labelled documents from {args.labels} -> {output}")
        return 0
    if args.model is None:
        raise ValueError("annotate --corpus needs --model (the model that answers the rubric).")
    reader = corpus_reader(args.corpus, text_key=args.text_key)
    documents = sample_documents(reader.run(), args.sample, args.seed)
    generator = load_generator(args.model, tokenizer=args.tokenizer, dtype=args.dtype, batch_size=args.batch_size)
    result = annotate_documents(documents, generator, rubric, max_document_tokens=args.max_document_tokens)
    write_labels(output, result.labelled)
    write_labels(f"{stem}.rejected.jsonl", result.rejected)
    _write_json(Path(f"{stem}.report.json"), {"model": args.model, "corpus": str(args.corpus), **result.counts})
    print(json.dumps(result.counts))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    output = Path(args.output)
    embed = EmbedDocuments(args.model, tokenizer=args.tokenizer, pooling=args.pooling, max_length=args.max_length,
                           batch_size=args.batch_size, dtype=args.dtype)
    pipeline = [corpus_reader(args.corpus, text_key=args.text_key, progress=True), embed, SaveEmbeddings(str(output), embed),
                JsonlWriter(str(output), output_filename=OUTPUT_FILENAME)]
    if not _run(pipeline, output / "logs", args, "quality-embed"):
        return 0
    stats = next(s["stats"] for s in step_totals(output / "logs") if s["name"].endswith(EmbedDocuments.name))
    report = {"corpus": str(args.corpus), "model": str(args.model), "embedded": int(stats.get("embedded", 0)),
              "truncated": int(stats.get("truncated", 0))}
    _write_json(output / "embed_report.json", report)
    print(json.dumps(report))
    return 0


def _label(record: dict[str, Any], where: str, scale: LabelScale) -> int:
    metadata = record.get("metadata", {})
    if "label" not in metadata:
        raise ValueError(f"{where}: the document has no label; embed a labels file (`quality annotate`) to train on.")
    return scale.check(metadata["label"], where)


def cmd_train(args: argparse.Namespace) -> int:
    rubric = RUBRICS[args.rubric]
    shards = read_embedded_shards(args.embeddings)
    labels = np.array([_label(record, where, rubric.scale) for record, where in zip(shards.records, shards.where)], np.int64)
    classifier, split = train_classifier(shards.embeddings, labels, shards.spec, kind=args.kind, scale=rubric.scale,
                                         threshold=args.threshold, test_fraction=args.test_fraction, seed=args.seed)
    output = Path(args.output)
    classifier.save(output)
    scores = classifier.score(shards.embeddings[split.test])
    report = write_training_report(output, classifier, [shards.records[i]["id"] for i in split.test], labels[split.test],
                                   scores, train_documents=len(split.train))
    metrics = report["metrics"]
    print(f"held-out ({metrics['documents']} documents): precision {metrics['precision']:.3f} recall "
          f"{metrics['recall']:.3f} F1 {metrics['f1']:.3f} macro-F1 {metrics['macro_f1']:.3f} -> {output}")
    return 0


def _report_markdown(report: dict[str, Any]) -> str:
    lines = ["# Quality filter", "", f"Classifier `{report['classifier']}` on model `{report['model']}`; "
             f"kept iff score >= {report['cutoff']:.4f} ({report['mode']}).", "", "| documents | count |", "|---|---|",
             f"| read and scored | {report['documents']} |", f"| kept | {report['kept']} |",
             *(f"| dropped: {reason} | {count} |" for reason, count in report["dropped"].items()),
             f"| truncated for embedding (kept or not) | {report['truncated_for_embedding']} |", ""]
    return "\n".join(lines)


def cmd_filter(args: argparse.Namespace) -> int:
    output = Path(args.output)
    kept, excluded = output / "kept", output / "excluded"
    common = dict(text_key=args.text_key, tokenizer=args.tokenizer, batch_size=args.batch_size, progress=True)
    if args.top_fraction is None:
        cutoff = cached_classifier(args.classifier).decision_score if args.threshold is None else args.threshold
        pipeline = filter_pipeline(args.corpus, args.model, args.classifier, kept, excluded, cutoff=cutoff, **common)
        if not _run(pipeline, output / "logs", args, "quality-filter"):
            return 0
        mode = "threshold"
        counts = filter_counts(output / "logs")
    else:
        scored = output / "scored"
        if not _run(scoring_pipeline(args.corpus, args.model, args.classifier, scored, **common), output / "logs-score",
                    args, "quality-score"):
            return 0
        cutoff, mode = top_fraction_cutoff(read_scores(scored), args.top_fraction), f"top fraction {args.top_fraction}"
        if not _run(cutoff_pipeline(scored, kept, excluded, cutoff), output / "logs-cutoff", args, "quality-cutoff"):
            return 0
        counts = filter_counts(output / "logs-score", output / "logs-cutoff")
    report = {"corpus": str(args.corpus), "model": str(args.model), "classifier": str(args.classifier), "mode": mode,
              "cutoff": cutoff, **counts}
    _write_json(output / "filter_report.json", report)
    (output / "filter_report.md").write_text(_report_markdown(report))
    print(json.dumps(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.curate quality", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    annotate = commands.add_parser("annotate", help="label a sample of documents with a local model, or check a labels file")
    source = annotate.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="folder of JSONL documents to sample")
    source.add_argument("--labels", help="JSONL of human/LLM labels (text, label) to check and convert")
    annotate.add_argument("--output", required=True, help="labels JSONL to write")
    annotate.add_argument("--rubric", choices=sorted(RUBRICS), default="edu")
    annotate.add_argument("--model", help="the annotating model (HF dir or Hub id, run, checkpoint, model dir)")
    annotate.add_argument("--tokenizer")
    annotate.add_argument("--sample", type=int, default=1000, help="documents to label")
    annotate.add_argument("--seed", type=int, default=0)
    annotate.add_argument("--max-document-tokens", type=int, default=512)
    annotate.add_argument("--batch-size", type=int, default=8, help="decode slots")
    annotate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    annotate.add_argument("--text-key", default="text")
    annotate.set_defaults(run=cmd_annotate)

    embed = commands.add_parser("embed", help="embed documents (shards + .npy beside each)")
    embed.add_argument("--corpus", required=True)
    embed.add_argument("--model", required=True)
    embed.add_argument("--output", required=True)
    embed.add_argument("--pooling", choices=POOLINGS, default="mean")
    embed.add_argument("--max-length", type=int, default=None, help="tokens per document (default min(512, context))")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--tokenizer")
    embed.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    embed.add_argument("--text-key", default="text")
    add_executor_options(embed)
    embed.set_defaults(run=cmd_embed)

    train = commands.add_parser("train", help="fit a classifier on embedded, labelled documents")
    train.add_argument("--embeddings", required=True, help="output folder of `quality embed` on a labels file")
    train.add_argument("--output", required=True)
    train.add_argument("--kind", choices=KINDS, default="random_forest")
    train.add_argument("--rubric", choices=sorted(RUBRICS), default="edu", help="the labels' scale")
    train.add_argument("--threshold", type=int, default=None, help="lowest high-quality label (edu: 3, phi: 1)")
    train.add_argument("--test-fraction", type=float, default=0.2)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=cmd_train)

    filt = commands.add_parser("filter", help="keep the documents the classifier scores high")
    filt.add_argument("--corpus", required=True)
    filt.add_argument("--model", required=True, help="the embedding model the classifier was trained on")
    filt.add_argument("--classifier", required=True)
    filt.add_argument("--output", required=True)
    cut = filt.add_mutually_exclusive_group()
    cut.add_argument("--threshold", type=float, default=None, help="lowest kept score (default: threshold label - 0.5)")
    cut.add_argument("--top-fraction", type=float, default=None, help="keep this fraction of the corpus, best first")
    filt.add_argument("--batch-size", type=int, default=32)
    filt.add_argument("--tokenizer")
    filt.add_argument("--text-key", default="text")
    add_executor_options(filt)
    filt.set_defaults(run=cmd_filter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
