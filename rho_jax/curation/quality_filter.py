"""The quality filter as datatrove pipelines: reader -> embed -> score -> filter -> writer.

Every document gets `metadata["quality_score"]` (the classifier's score on its label scale, see
`rho_jax.curation.classifier`). It is kept iff score >= the cut-off; a dropped document goes to the
exclusion folder with `metadata["filter_reason"] = "below_threshold"`.

Cut-off: a score `threshold` (default: the classifier's `decision_score`, threshold label - 0.5), or a
`top_fraction` f of the whole corpus: the k-th largest score over all tasks, k = ceil(f * documents), so
every document scoring at least as high as the k-th is kept (ties at the cut-off may keep a few more
than k). A top fraction needs every score before the first document is dropped, so it runs in two
pipelines: `scoring_pipeline` (reader -> embed -> score -> writer of scored documents), then, after
`top_fraction_cutoff` over those scores, `cutoff_pipeline` (reader of the scored documents -> filter ->
writer). Each pipeline runs under any datatrove executor and resumes by task.

The embedding settings (pooling, max_length, dtype) come from the classifier, and `ScoreDocuments`
refuses a classifier trained on another model's embeddings before it scores anything.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.batching import batched

from rho_jax.curation.classifier import QualityClassifier
from rho_jax.curation.corpus import corpus_reader
from rho_jax.curation.embeddings import EMBEDDING_KEY, SHARD_SUFFIX, EmbedDocuments
from rho_jax.jsonl import json_lines

SCORE_KEY = "quality_score"
BELOW_THRESHOLD = "below_threshold"
OUTPUT_FILENAME = "${rank}" + SHARD_SUFFIX


@functools.lru_cache(maxsize=4)
def cached_classifier(path: str) -> QualityClassifier:
    """`QualityClassifier.load(path)`, once per process."""
    return QualityClassifier.load(path)


class ScoreDocuments(PipelineStep):
    """datatrove step: replaces each document's `metadata["embedding"]` (from `embed`) by
    `metadata["quality_score"]`, the score of the classifier saved in `classifier`. Refuses (ValueError)
    a classifier whose embedding spec differs from `embed`'s embedder before scoring anything."""

    name = "⭐ Quality score"
    type = "🔢 - EMBEDDING"

    def __init__(self, classifier: str | Path, embed: EmbedDocuments, window: int = 1024):
        super().__init__()
        self.classifier = str(classifier)
        self.embed = embed
        self.window = window

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        classifier = cached_classifier(self.classifier)
        classifier.check_spec(self.embed.embedder().spec, self.embed.model)
        for chunk in batched(data or (), self.window):
            if any(EMBEDDING_KEY not in doc.metadata for doc in chunk):
                raise ValueError(f"ScoreDocuments needs metadata['{EMBEDDING_KEY}']: put EmbedDocuments before it.")
            with self.track_time(unit="batch"):
                scores = classifier.score(np.stack([doc.metadata.pop(EMBEDDING_KEY) for doc in chunk]))
            for doc, score in zip(chunk, scores):
                doc.metadata[SCORE_KEY] = float(score)
                self.stat_update("scored")
                yield doc


class QualityCutoffFilter(BaseFilter):
    """datatrove filter: keeps a document iff `metadata["quality_score"] >= cutoff`; otherwise drops it
    with reason `below_threshold` (to `exclusion_writer`, if given)."""

    name = "🎯 Quality cut-off"

    def __init__(self, cutoff: float, exclusion_writer: JsonlWriter | None = None):
        super().__init__(exclusion_writer)
        self.cutoff = float(cutoff)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        score = doc.metadata.get(SCORE_KEY)
        if not isinstance(score, (int, float)):
            raise ValueError(f"document {doc.id} has no numeric metadata['{SCORE_KEY}']: score it first (ScoreDocuments).")
        return True if score >= self.cutoff else (False, BELOW_THRESHOLD)


def _writer(folder: str | Path) -> JsonlWriter:
    return JsonlWriter(str(folder), output_filename=OUTPUT_FILENAME)


def _scoring_steps(corpus: str | Path, model: str | Path, classifier: str | Path, *, text_key: str,
                   tokenizer: str | None, batch_size: int, progress: bool) -> list[PipelineStep]:
    spec = cached_classifier(str(classifier)).spec
    embed = EmbedDocuments(model, tokenizer=tokenizer, pooling=spec.pooling, max_length=spec.max_length,
                           batch_size=batch_size, dtype=spec.dtype)
    return [corpus_reader(corpus, text_key=text_key, progress=progress), embed, ScoreDocuments(classifier, embed)]


def filter_pipeline(corpus: str | Path, model: str | Path, classifier: str | Path, kept: str | Path,
                    excluded: str | Path, *, cutoff: float | None = None, text_key: str = "text",
                    tokenizer: str | None = None, batch_size: int = 32, progress: bool = False) -> list[PipelineStep]:
    """reader(corpus) -> embed(model) -> score(classifier) -> keep score >= cutoff (default: the classifier's
    `decision_score`; the rest to `excluded`) -> writer(kept). `progress`: a bar of the documents read per task."""
    cutoff = cached_classifier(str(classifier)).decision_score if cutoff is None else cutoff
    return [*_scoring_steps(corpus, model, classifier, text_key=text_key, tokenizer=tokenizer, batch_size=batch_size,
                            progress=progress),
            QualityCutoffFilter(cutoff, _writer(excluded)), _writer(kept)]


def scoring_pipeline(corpus: str | Path, model: str | Path, classifier: str | Path, scored: str | Path, *,
                     text_key: str = "text", tokenizer: str | None = None, batch_size: int = 32,
                     progress: bool = False) -> list[PipelineStep]:
    """reader(corpus) -> embed(model) -> score(classifier) -> writer(scored): every document, with its score."""
    return [*_scoring_steps(corpus, model, classifier, text_key=text_key, tokenizer=tokenizer, batch_size=batch_size,
                            progress=progress),
            _writer(scored)]


def cutoff_pipeline(scored: str | Path, kept: str | Path, excluded: str | Path, cutoff: float) -> list[PipelineStep]:
    """reader(scored documents) -> keep score >= cutoff (the rest to `excluded`) -> writer(kept)."""
    return [JsonlReader(str(scored), glob_pattern=f"*{SHARD_SUFFIX}"), QualityCutoffFilter(cutoff, _writer(excluded)),
            _writer(kept)]


def read_scores(folder: str | Path) -> np.ndarray:
    """float64 `metadata["quality_score"]` of every document in the `*.jsonl.gz` shards of `folder`."""
    scores = []
    for shard in sorted(Path(folder).glob(f"*{SHARD_SUFFIX}")):
        scores += [record["metadata"][SCORE_KEY] for record in json_lines(shard)]
    return np.asarray(scores, np.float64)


def top_fraction_cutoff(scores: np.ndarray, fraction: float) -> float:
    """The k-th largest score, k = ceil(fraction * len(scores)): keeping score >= it keeps the top fraction."""
    if not 0 < fraction <= 1:
        raise ValueError(f"top fraction must lie in (0, 1], got {fraction!r}.")
    if len(scores) == 0:
        raise ValueError("no scored documents: the corpus is empty.")
    k = math.ceil(fraction * len(scores))
    return float(np.sort(scores)[::-1][k - 1])


def step_totals(logging_dir: str | Path) -> list[dict[str, Any]]:
    """Per pipeline step, its name and every stat summed over the tasks' `stats/NNNNN.json` of `logging_dir`
    (all tasks, including those finished by an earlier, interrupted run)."""
    steps: list[dict[str, Any]] = []
    for path in sorted((Path(logging_dir) / "stats").glob("*.json")):
        for index, step in enumerate(json.loads(path.read_text())):
            if index == len(steps):
                steps.append({"name": step["name"], "stats": {}})
            totals = steps[index]["stats"]
            for key, value in step["stats"].items():
                totals[key] = totals.get(key, 0) + (value["total"] if isinstance(value, dict) else value)
    return steps


def _find(steps: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((s["stats"] for s in steps if s["name"].endswith(name)), {})


def filter_counts(scoring_logs: str | Path, cutoff_logs: str | Path | None = None) -> dict[str, Any]:
    """Documents read, embedded, truncated, kept and dropped per reason, from the datatrove stats of the
    filter pipeline (`scoring_logs` alone) or of the scoring and cut-off pipelines."""
    scoring = step_totals(scoring_logs)
    cutoff_steps = step_totals(cutoff_logs) if cutoff_logs is not None else scoring
    embed, cut = _find(scoring, EmbedDocuments.name), _find(cutoff_steps, QualityCutoffFilter.name)
    return {
        "documents": int(embed.get("embedded", 0)),
        "truncated_for_embedding": int(embed.get("truncated", 0)),
        "kept": int(cut.get("forwarded", 0)),
        "dropped": {key.removeprefix("dropped_"): int(value) for key, value in cut.items() if key.startswith("dropped_")},
    }
