"""N-gram decontamination of a training corpus against the evaluation index, as a datatrove filter.

A hit is a position j of a document whose word n-gram (words j..j+n-1, `rho_jax.curation.ngrams`) is in
the index; its character span runs from the first character of word j to the last of word j+n-1. Hits are
counted per position, so a copied passage of m >= n words gives m - n + 1 hits. Per mode:

    report  every document goes on; each contaminated one is reported (below)
    drop    a document with a hit is dropped (reason `contaminated`)
    cut     lm-eval's Janitor: the text from `window` characters before each hit to `window` after it is
            removed; a document with more than `max_hits` hits is dropped (`too_many_hits`), one with no
            piece left is dropped (`nothing_left`), the others keep their pieces joined by a blank line.

`cut_pieces` is the Janitor's splitting, convention for convention: with a hit's span [a, b] (b its last
character) and w the window, the piece before a hit ends at a - w and is kept iff it is longer than
`min_piece` characters; the next piece starts at b + w; the tail after the last hit starts at b + w + 1 and
is kept iff it has at least `min_piece` characters. (Documents without hits are never cut: the Janitor's
`clean` would also return nothing for a clean document shorter than `min_piece`.)

Every mode writes, per task, `<rank>.jsonl` into the report folder: one row per (document, evaluation item)
pair, {doc_id, source, task, idx, ngrams (hits of that item), matches: [{start, end, text}] (the merged
character spans of those hits, end exclusive, and their text)}, and `<rank>.counts.json` with the task's
counts. A contaminated document also gets `metadata["contamination"] = {"ngram_hits", "items"}`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from rho_jax.curation.eval_index import NGramIndex
from rho_jax.curation.ngrams import DecontaminationError, batch_ngram_hashes, word_spans

__all__ = ["MODES", "CutSettings", "NGramDecontamination", "cut_pieces"]

MODES = ("report", "drop", "cut")
PIECE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class CutSettings:
    """lm-eval Janitor's parameters: characters removed on each side of a hit, the most hits a kept document
    may have, the shortest piece kept."""

    window: int = 200
    max_hits: int = 10
    min_piece: int = 200

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DecontaminationError(f"cut setting {name} must be a non-negative integer, got {value!r}")


def cut_pieces(text: str, spans: Sequence[tuple[int, int]], settings: CutSettings) -> list[str] | None:
    """The pieces of `text` left after cutting around each hit ([start, end) character spans, in order), or
    None when there are more than `max_hits` hits (module docstring: the Janitor's conventions)."""
    if len(spans) > settings.max_hits:
        return None
    pieces, resume, last = [], 0, -1
    for start, end in spans:
        cut_from = max(0, start - settings.window)
        last = min(len(text), end - 1 + settings.window)
        if cut_from - resume > settings.min_piece:
            pieces.append(text[resume:cut_from])
        resume = last
    if last < len(text) - settings.min_piece:
        pieces.append(text[last + 1:])
    return pieces


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching [start, end) spans merged, in order."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


class NGramDecontamination(BaseFilter):
    """Finds evaluation n-grams in documents (vectorized over a batch) and reports, drops or cuts them.

    The index is loaded from `index_path` inside each task (the step itself stays small to pickle)."""

    name = "🧼 n-gram decontamination"
    type = "🦠 - DECONT"

    def __init__(self, index_path: str, report_folder: DataFolderLike, *, mode: str = "report",
                 cut: CutSettings | None = None, exclusion_writer: DiskWriter | None = None, batch_size: int = 256):
        if mode not in MODES:
            raise DecontaminationError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.index_path = str(index_path)
        self.report_folder = get_datafolder(report_folder)
        self.mode = mode
        self.cut = cut or CutSettings()
        self._index: NGramIndex | None = None
        self._report = None
        self._counts: Counter = Counter()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        index = self._index
        grams = batch_ngram_hashes([doc.text for doc in batch], index.settings)
        found, rows = index.contains(grams.hashes)
        results: list[bool | tuple[bool, str]] = [True] * len(batch)
        self._counts["documents"] += len(batch)
        self._counts["characters"] += sum(len(doc.text) for doc in batch)
        if not len(found):
            return results
        docs_hit = grams.text[found]
        order = np.argsort(docs_hit, kind="stable")
        for doc_number, members in _groups(docs_hit[order], order):
            doc = batch[doc_number]
            words = slice(grams.first_word[doc_number], grams.first_word[doc_number] + grams.word_counts[doc_number])
            spans = grams.word_bytes[words] if doc.text.isascii() else word_spans(doc.text)
            if len(spans) != grams.word_counts[doc_number]:
                raise RuntimeError(f"document {doc.id}: {len(spans)} located words but {grams.word_counts[doc_number]} "
                                   "hashed ones (the two normalization paths disagree; please report this text)")
            results[doc_number] = self._contaminated(doc, spans, grams.position[found[members]], rows[members])
        return results

    def _contaminated(self, doc: Document, spans: np.ndarray, positions: np.ndarray,
                      rows: np.ndarray) -> bool | tuple[bool, str]:
        """Report a document with hits at word `positions` (index `rows`; `spans` the characters of its words),
        then keep, drop or cut it."""
        n = self._index.settings.n
        hit_spans = list(zip(spans[positions, 0].tolist(), spans[positions + n - 1, 1].tolist()))
        hits, owners = self._index.owners(rows)
        order = np.lexsort((hits, owners))
        found = []
        for item_id, members in _groups(owners[order], hits[order]):
            item = self._index.items[item_id]
            matches = [{"start": start, "end": end, "text": doc.text[start:end]}
                       for start, end in _merge([hit_spans[k] for k in members.tolist()])]
            self._write_report({"doc_id": doc.id, "source": doc.metadata.get("file_path"), "task": item.task,
                                "idx": item.idx, "ngrams": len(members), "matches": matches})
            found.append(f"{item.task}:{item.idx}")
        doc.metadata["contamination"] = {"ngram_hits": len(hit_spans), "items": found}
        self._counts["contaminated_documents"] += 1
        self._counts["ngram_hits"] += len(hit_spans)
        self.stat_update("contaminated")
        if self.mode == "report":
            return True
        if self.mode == "drop":
            return self._drop("contaminated")
        pieces = cut_pieces(doc.text, hit_spans, self.cut)
        if pieces is None:
            return self._drop("too_many_hits")
        if not pieces:
            return self._drop("nothing_left")
        self._counts["cut_documents"] += 1
        self._counts["characters_cut"] += len(doc.text) - sum(map(len, pieces))
        self.stat_update("cut")
        doc.text = PIECE_SEPARATOR.join(pieces)
        return True

    def _drop(self, reason: str) -> tuple[bool, str]:
        self._counts[f"dropped_{reason}"] += 1
        return False, reason

    def _write_report(self, row: dict[str, Any]) -> None:
        self._report.write(json.dumps(row, ensure_ascii=False) + "\n")

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._index = NGramIndex.load(self.index_path)
        self._counts = Counter()
        with self.report_folder.open(f"{rank:05d}.jsonl", "wt") as self._report:
            for doc in super().run(data, rank, world_size):
                self._counts["kept_documents"] += 1
                yield doc
        with self.report_folder.open(f"{rank:05d}.counts.json", "wt") as handle:
            json.dump({"rank": rank, "mode": self.mode, **self._counts}, handle, indent=1)


def _groups(keys: np.ndarray, members: np.ndarray):
    """(key, members with that key) for each run of equal values in sorted `keys`."""
    bounds = np.flatnonzero(np.diff(keys)) + 1
    for chunk_keys, chunk in zip(np.split(keys, bounds), np.split(members, bounds)):
        yield int(chunk_keys[0]), np.sort(chunk)
