"""Second decontamination stage (phi-1): documents whose embedding is close to an evaluation item's.

For a document vector d and an item vector e, cosine(d, e) = d.e / (|d| |e|), taken as 0 when either is the
zero vector. A (document, item) pair is reported when cosine >= threshold: the `top_k` highest such items
per document, best first. phi-1 thresholds the L2 distance between embeddings instead; for unit vectors
|d - e|^2 = 2 - 2 cosine(d, e), so the two agree.

Any `embed(texts) -> array [len(texts), dim]` works: `model:PATH` is a rho_jax/HF model's mean-pooled hidden
states (`rho_jax.curation.embeddings`), `HashedBagOfWords` a model-free lexical one. In a datatrove pipeline
`NearDuplicateReport` examines every document that reaches it (placed after the n-gram filter: all documents
in `report` mode, the ones the n-grams let through otherwise), writes `<rank>.jsonl` rows {doc_id, source,
task, idx, score, ngram_flagged} into its report folder, and adds `metadata["near_duplicates"]`. Each task
embeds the evaluation items once.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from rho_jax.analysis.models import model_source
from rho_jax.curation.embeddings import ModelEmbedding
from rho_jax.curation.eval_index import NGramIndex
from rho_jax.curation.ngrams import DecontaminationError, NGramSettings, batch_ngram_hashes
from rho_jax.training.model_sources import tokenizer_dir

__all__ = ["HashedBagOfWords", "NearDuplicateReport", "cosine_matches", "resolve_embedder"]

Embedder = Callable[[Sequence[str]], np.ndarray]


class HashedBagOfWords:
    """Feature-hashed word counts: each normalized word adds sign(h) to bucket h mod `dim`, h its word hash
    (`rho_jax.curation.ngrams`), sign + for an even top bit and - for an odd one. Lexical, deterministic."""

    def __init__(self, dim: int = 4096, fold_digits: bool = False):
        if dim < 1:
            raise DecontaminationError(f"dim must be a positive integer, got {dim}")
        self.dim = dim
        self.settings = NGramSettings(n=1, fold_digits=fold_digits)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        words = batch_ngram_hashes(list(texts), self.settings)
        signs = 1.0 - 2.0 * (words.hashes >> np.uint64(63)).astype(np.float32)
        vectors = np.zeros((len(texts), self.dim), np.float32)
        np.add.at(vectors, (words.text, (words.hashes % np.uint64(self.dim)).astype(np.int64)), signs)
        return vectors


MODEL_PREFIX = "model:"


def resolve_embedder(spec: str) -> Embedder:
    """`bow` (HashedBagOfWords()), `model:PATH` (the mean-pooled hidden states of the model at PATH, with its
    own tokenizer: an HF directory, a rho_jax run or checkpoint; checked here, loaded on first use) or
    `module:attribute`, an importable embed(texts) callable."""
    if spec == "bow":
        return HashedBagOfWords()
    if spec.startswith(MODEL_PREFIX):
        return _model_embedder(spec[len(MODEL_PREFIX):])
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise DecontaminationError(f"embedder must be 'bow', 'model:PATH' or 'module:callable', got {spec!r}")
    try:
        embed = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise DecontaminationError(f"cannot load embedder {spec!r}: {err}") from None
    if not callable(embed):
        raise DecontaminationError(f"embedder {spec!r} is not callable")
    return embed


def _model_embedder(path: str) -> ModelEmbedding:
    if not Path(path).is_dir():
        raise DecontaminationError(f"embedding model {path!r} is not a directory (an HF model, a rho_jax run or checkpoint)")
    try:
        tokenizer = tokenizer_dir(model_source(path))
    except (FileNotFoundError, ValueError) as err:
        raise DecontaminationError(f"embedding model {path!r}: {err}") from None
    if tokenizer is None:
        raise DecontaminationError(f"embedding model {path!r} carries no tokenizer files; embed with a model saved with "
                                   "its tokenizer (an HF directory, or a rho_jax run, which keeps its tokenizer)")
    return ModelEmbedding(str(Path(path).resolve()), tokenizer=str(tokenizer))


def _unit_rows(vectors: np.ndarray, count: int, what: str) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) != count:
        raise DecontaminationError(f"embed() returned shape {vectors.shape} for {count} {what}; expected ({count}, dim)")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def cosine_matches(documents: np.ndarray, items: np.ndarray, threshold: float,
                   top_k: int) -> list[list[tuple[int, float]]]:
    """Per document row, [(item row, cosine)] of the `top_k` items with cosine >= threshold, best first
    (ties: lower item row first). Both arguments are unit rows (or zero rows)."""
    scores = documents @ items.T
    matches = []
    for row in scores:
        above = np.flatnonzero(row >= threshold)
        best = above[np.lexsort((above, -row[above]))][:top_k]
        matches.append([(int(item), float(row[item])) for item in best])
    return matches


class NearDuplicateReport(PipelineStep):
    """Reports documents whose embedding has cosine >= `threshold` with an evaluation item's; passes all on."""

    name = "🔎 embedding near-duplicates"
    type = "🦠 - DECONT"

    def __init__(self, index_path: str, report_folder: DataFolderLike, *, embed: str | Embedder = "bow",
                 threshold: float = 0.9, top_k: int = 5, batch_size: int = 64):
        super().__init__()
        if not -1.0 <= threshold <= 1.0:
            raise DecontaminationError(f"cosine threshold must be in [-1, 1], got {threshold}")
        self.index_path = str(index_path)
        self.report_folder = get_datafolder(report_folder)
        self.embed = embed
        self.threshold = threshold
        self.top_k = top_k
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        index = NGramIndex.load(self.index_path)
        embed = resolve_embedder(self.embed) if isinstance(self.embed, str) else self.embed
        items = _unit_rows(embed([item.text for item in index.items]), len(index.items), "evaluation items")
        with self.report_folder.open(f"{rank:05d}.jsonl", "wt") as report:
            for batch in batched(data or [], self.batch_size):
                with self.track_time("batch"):
                    vectors = _unit_rows(embed([doc.text for doc in batch]), len(batch), "documents")
                    for doc, matches in zip(batch, cosine_matches(vectors, items, self.threshold, self.top_k)):
                        self.stat_update("documents")
                        if not matches:
                            continue
                        self.stat_update("near_duplicates")
                        found = []
                        for item_id, score in matches:
                            item = index.items[item_id]
                            found.append(f"{item.task}:{item.idx}")
                            report.write(json.dumps({"doc_id": doc.id, "source": doc.metadata.get("file_path"),
                                                     "task": item.task, "idx": item.idx, "score": round(score, 6),
                                                     "ngram_flagged": "contamination" in doc.metadata},
                                                    ensure_ascii=False) + "\n")
                        doc.metadata["near_duplicates"] = found
                yield from batch
