"""The quickstart's reference data, curated from the mixed pool with `python -m rho_jax.curate`.

The steps are the curation command lines a user would type (each printed, then run in-process through
`rho_jax.curate.main`), on the corpus of `rho_jax.quickstart.corpus` and an embedding model trained on
the pool:

    quality annotate --labels annotations.jsonl      check and convert the annotator's labels (phi rubric: 0/1)
    quality embed    the labelled sample             the embedding model's mean-pooled features (first 128 tokens)
    quality train    a classifier with a held-out split of the labelled sample
    quality filter   the whole pool, kept iff score >= the threshold
    decontaminate index + run --mode drop            the kept documents against heldout.jsonl (word n-grams,
                                                     n = `DECONTAMINATION_N`)

and the documents left become `reference.jsonl`. A step whose final file exists is skipped, so a rerun
resumes (datatrove's completion markers resume a step killed mid-way). `reference_data_facts` reads
what the steps wrote, and the pool's true kinds, into the report's "Reference data" figures.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rho_jax import curate
from rho_jax.jsonl import json_lines
from rho_jax.quickstart.corpus import DECONTAMINATION_N, POOL_KINDS

REFERENCE_FILE = "reference.jsonl"
LABELS_FILE = "labels.jsonl"
TEST_FRACTION = 0.25
EMBED_MAX_LENGTH = 128  # tokens embedded per document: enough to tell the kinds apart, 3x faster than 256


@dataclasses.dataclass(frozen=True)
class CurateStep:
    """One `python -m rho_jax.curate` command; `done` exists once it has finished."""

    title: str
    argv: tuple[str, ...]
    done: Path

    @property
    def command(self) -> str:
        return "python -m rho_jax.curate " + shlex.join(self.argv)


def curation_steps(data: Path, embedder: Path, out: Path, *, kind: str, threshold: float | None) -> list[CurateStep]:
    """The commands that turn `data`/pool.jsonl into `out`/reference.jsonl (classifier `kind`, filter `threshold`:
    None for the classifier's decision score)."""
    labels, embedded, classifier = out / LABELS_FILE, out / "embedded", out / "classifier"
    filtered, index, decontaminated = out / "filtered", out / "heldout-index.npz", out / "decontaminated"
    cut = () if threshold is None else ("--threshold", str(threshold))
    return [
        CurateStep("the annotator's labels", ("quality", "annotate", "--labels", str(data / "annotations.jsonl"),
                                              "--rubric", "phi", "--output", str(labels)), labels),
        CurateStep("embeddings of the labelled sample", ("quality", "embed", "--corpus", str(labels), "--model",
                                                         str(embedder), "--max-length", str(EMBED_MAX_LENGTH),
                                                         "--output", str(embedded)),
                   embedded / "embed_report.json"),
        CurateStep("quality classifier", ("quality", "train", "--embeddings", str(embedded), "--output", str(classifier),
                                          "--kind", kind, "--rubric", "phi", "--test-fraction", str(TEST_FRACTION)),
                   classifier / "report.json"),
        CurateStep("quality filter of the pool", ("quality", "filter", "--corpus", str(data / "pool.jsonl"), "--model",
                                                  str(embedder), "--classifier", str(classifier), "--output", str(filtered),
                                                  *cut), filtered / "filter_report.json"),
        CurateStep("n-gram index of the held-out set", ("decontaminate", "index", "--jsonl", str(data / "heldout.jsonl"),
                                                        "--field", "text", "--n", str(DECONTAMINATION_N), "--output",
                                                        str(index)), index),
        CurateStep("decontamination of the kept documents", ("decontaminate", "run", "--index", str(index), "--input",
                                                             str(filtered / "kept"), "--output", str(decontaminated),
                                                             "--mode", "drop"), decontaminated / "summary.json"),
    ]


def run_step(step: CurateStep) -> bool:
    """Run `step` unless it has finished; False if it failed (its command printed its error)."""
    print(f"    {step.command}", flush=True)
    if step.done.exists():
        print(f"    (done: {step.done} exists)", flush=True)
        return True
    return curate.main(list(step.argv)) == 0 and step.done.exists()


def _records(folder: Path, pattern: str) -> Iterator[dict[str, Any]]:
    """The JSON lines of the `pattern` files of `folder` (gzip if named .gz), in file-name order."""
    for path in sorted(folder.glob(pattern)):
        yield from json_lines(path)


def write_reference(out: Path) -> Path:
    """`out`/reference.jsonl: {"id", "text"} of each document decontamination kept, in shard order (atomically)."""
    path, staging = out / REFERENCE_FILE, out / (REFERENCE_FILE + ".tmp")
    with open(staging, "w", encoding="utf-8") as f:
        for record in _records(out / "decontaminated" / "documents", "*.jsonl"):
            f.write(json.dumps({"id": record["id"], "text": record["text"]}, ensure_ascii=False) + "\n")
    staging.replace(path)
    return path


def _by_kind(ids: Iterator[str], kinds: dict[str, str]) -> dict[str, int]:
    counts = Counter(kinds[doc_id] for doc_id in ids)
    return {kind: counts.get(kind, 0) for kind in POOL_KINDS}


def reference_data_facts(data: Path, out: Path) -> dict[str, Any]:
    """The report's figures: the classifier's held-out metrics, kept/total per pool kind, the planted
    contaminations decontamination found, and the reference set's size (from the files the steps wrote)."""
    kinds = {record["id"]: record["kind"] for record in _records(data, "pool.jsonl")}
    classifier = json.loads((out / "classifier" / "report.json").read_text())
    filter_report = json.loads((out / "filtered" / "filter_report.json").read_text())
    kept = _by_kind((r["id"] for r in _records(out / "filtered" / "kept", "*.jsonl.gz")), kinds)
    flagged = _by_kind((r["id"] for r in _records(out / "decontaminated" / "excluded", "*.jsonl")), kinds)
    reference = _by_kind((r["id"] for r in _records(out, REFERENCE_FILE)), kinds)
    metrics = classifier["metrics"]
    return {
        "classifier": {"kind": classifier["kind"], "train_documents": classifier["train_documents"],
                       "heldout_documents": metrics["documents"],
                       **{key: metrics[key] for key in ("precision", "recall", "f1", "macro_f1", "accuracy")}},
        "filter": {"cutoff": filter_report["cutoff"], "total": _by_kind(iter(kinds), kinds), "kept": kept},
        "decontamination": {"n": DECONTAMINATION_N, "planted": sum(k == "contaminated" for k in kinds.values()),
                            "planted_kept_by_filter": kept["contaminated"], "planted_found": flagged["contaminated"],
                            "other_documents_flagged": sum(flagged.values()) - flagged["contaminated"]},
        "reference": {"documents": sum(reference.values()), "by_kind": reference},
    }
