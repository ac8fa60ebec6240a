"""The n-gram index of the evaluation sets: which hashed word n-grams (`rho_jax.curation.ngrams`) occur in
which evaluation items.

An item is one evaluation sample: its task, its idx and its text. From a task spec (`build_samples`) the text
is the question, a newline, and the answer: the chain of thought when the task has one (`gt_cot`: GSM8K's
worked solution), else the row's ground-truth field when the sample copies it (MATH's solution), followed
by the ground truth unless the answer already ends with it; without either, the ground truth alone. From
any JSONL the text is the chosen fields of each row joined by newlines; idx is the row's `idx` (or `id`)
field when it has one, else its row number. N-grams run across the question/answer boundary, so a training
document that quotes the end of a question and the start of its answer is found too.

`NGramIndex` holds the sorted unique uint64 n-gram hashes, for each hash the items it came from (CSR:
`item_ids[offsets[k]:offsets[k+1]]` for `hashes[k]`), the items, and the `NGramSettings` it was built with.
`contains` tests a whole array of hashes at once: a bitmap over the top bits of the hash rejects most
non-members, `searchsorted` confirms the rest. On disk it is one .npz (no pickle) with the settings and the
`NGRAM_SCHEME` recorded; loading an index of another scheme, or a file that is not an index, is refused.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rho_jax.curation.ngrams import NGRAM_SCHEME, DecontaminationError, NGramSettings, batch_ngram_hashes
from rho_jax.jsonl import json_objects

__all__ = ["EvalItem", "NGramIndex", "build_index", "items_from_jsonl", "items_from_tasks", "uncovered_items"]

INDEX_FORMAT = 1
_BUILD_BATCH = 512  # items hashed per batch


@dataclass(frozen=True)
class EvalItem:
    """One evaluation sample: the task it belongs to, its idx there, and the text whose n-grams are indexed."""

    task: str
    idx: int | str
    text: str


def _sample_text(sample, gt_field: str) -> str:
    answer = sample.fields.get("gt_cot")
    if not isinstance(answer, str) or not answer.strip():
        answer = sample.fields.get(gt_field)
    if not isinstance(answer, str) or not answer.strip():
        return f"{sample.question}\n{sample.gt}"
    answer = answer.rstrip()
    return f"{sample.question}\n{answer}" if answer.endswith(sample.gt) else f"{sample.question}\n{answer}\n{sample.gt}"


def items_from_tasks(names: Sequence[str], *, data_dir: Path | None, fewshot_dir: Path | None,
                     limit: int | None = None) -> list[EvalItem]:
    """The items of the named task specs (shipped names or YAML files), read with `build_samples`."""
    from rho_jax.evaluation.tasks import build_samples, load_task

    items = []
    for name in names:
        spec = load_task(name)
        samples = build_samples(spec, data_dir=data_dir, fewshot_dir=fewshot_dir, limit=limit)
        items += [EvalItem(spec.name, sample.idx, _sample_text(sample, spec.gt.field)) for sample in samples]
    return items


def items_from_jsonl(path: Path, fields: Sequence[str], task: str | None = None) -> list[EvalItem]:
    """One item per row of `path`: its `fields` (strings; lists of strings are joined) joined by newlines."""
    path = Path(path)
    if not path.is_file():
        raise DecontaminationError(f"evaluation file {path} does not exist")
    if not fields:
        raise DecontaminationError("give at least one field to index (--field question,answer)")
    items = []
    for where, row in json_objects(path, DecontaminationError):
        parts = []
        for name in fields:
            if name not in row:
                raise DecontaminationError(f"{where}: no field {name!r} (the row has "
                                           f"{', '.join(map(str, row)) or 'no fields'})")
            value = row[name]
            if isinstance(value, list) and all(isinstance(part, str) for part in value):
                value = "\n".join(value)
            if not isinstance(value, str):
                raise DecontaminationError(f"{where}: field {name!r} must be a string or a list of "
                                           f"strings, got {type(value).__name__}")
            parts.append(value)
        idx = row.get("idx", row.get("id", len(items)))
        items.append(EvalItem(task or path.name.split(".")[0], idx if isinstance(idx, int | str) else len(items),
                              "\n".join(parts)))
    return items


@dataclass
class NGramIndex:
    """Sorted unique n-gram hashes of the evaluation items, the items each came from, and the settings."""

    settings: NGramSettings
    hashes: np.ndarray
    offsets: np.ndarray
    item_ids: np.ndarray
    items: list[EvalItem]

    def __len__(self) -> int:
        return len(self.hashes)

    @functools.cached_property
    def _bitmap(self) -> tuple[np.ndarray, np.uint64]:
        """A bool per value of the top `bits` bits of a hash: True iff some indexed hash has those bits.
        About 1 in 16 non-members passes (bits = log2(size) + 4, between 16 and 24)."""
        bits = min(24, max(16, int(len(self.hashes)).bit_length() + 4))
        shift = np.uint64(64 - bits)
        bitmap = np.zeros(1 << bits, bool)
        bitmap[self.hashes >> shift] = True
        return bitmap, shift

    def contains(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions of the queries that are indexed, their rows in `hashes`), both int64 arrays."""
        bitmap, shift = self._bitmap
        candidates = np.flatnonzero(bitmap[queries >> shift])
        if not len(candidates) or not len(self.hashes):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = np.searchsorted(self.hashes, queries[candidates])
        rows[rows == len(self.hashes)] = 0
        found = self.hashes[rows] == queries[candidates]
        return candidates[found], rows[found]

    def owners(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For n-grams `hashes[rows]`: (k, item id) pairs, one per item that holds n-gram `hashes[rows[k]]`."""
        starts = self.offsets[rows]
        counts = self.offsets[rows + 1] - starts
        which = np.repeat(np.arange(len(rows)), counts)
        within = np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)
        return which, self.item_ids[starts[which] + within]

    def task_sizes(self) -> dict[str, int]:
        """Number of items per task, in first-seen order."""
        sizes: dict[str, int] = {}
        for item in self.items:
            sizes[item.task] = sizes.get(item.task, 0) + 1
        return sizes

    def check_settings(self, settings: NGramSettings, where: str) -> None:
        """Refuse settings other than the index's own (n-grams hashed otherwise would never match)."""
        if settings != self.settings:
            raise DecontaminationError(f"{where} was built with n={self.settings.n}, fold_digits="
                                       f"{self.settings.fold_digits}, but n={settings.n}, fold_digits="
                                       f"{settings.fold_digits} was asked for; rebuild the index with those settings "
                                       "or drop the options to use the index's own")

    def save(self, path: Path) -> None:
        """Write the index as one .npz (no pickled objects)."""
        texts = [item.text.encode("utf-8") for item in self.items]
        meta = {"format": INDEX_FORMAT, **self.settings.to_dict(),
                "items": [[item.task, item.idx] for item in self.items]}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, hashes=self.hashes, offsets=self.offsets, item_ids=self.item_ids,
                     text_offsets=np.cumsum([0] + [len(text) for text in texts]).astype(np.int64),
                     texts=np.frombuffer(b"".join(texts), np.uint8),
                     meta=np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8))

    @classmethod
    def load(cls, path: Path) -> NGramIndex:
        """Read an index written by `save`; refuses other files and indexes of another normalization/hash scheme."""
        path = Path(path)
        if not path.is_file():
            raise DecontaminationError(f"index file {path} does not exist (build one with `decontaminate index`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in
                          ("hashes", "offsets", "item_ids", "text_offsets", "texts", "meta")}
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        except (OSError, ValueError, KeyError) as err:
            raise DecontaminationError(f"{path} is not a decontamination index ({type(err).__name__}: {err})") from None
        if meta.get("format") != INDEX_FORMAT or meta.get("scheme") != NGRAM_SCHEME:
            raise DecontaminationError(f"{path} was built with n-gram scheme {meta.get('scheme')!r} (index format "
                                       f"{meta.get('format')!r}); this rho_jax reads scheme {NGRAM_SCHEME!r}, format "
                                       f"{INDEX_FORMAT}: rebuild it with `decontaminate index`")
        texts, bounds = arrays["texts"].tobytes(), arrays["text_offsets"]
        items = [EvalItem(task, idx, texts[bounds[k]: bounds[k + 1]].decode("utf-8"))
                 for k, (task, idx) in enumerate(meta["items"])]
        index = cls(NGramSettings(meta["n"], meta["fold_digits"]), arrays["hashes"], arrays["offsets"],
                    arrays["item_ids"], items)
        if not len(index):
            raise DecontaminationError(f"{path} is an empty index (no n-grams): nothing to decontaminate against")
        return index


def build_index(items: Iterable[EvalItem], settings: NGramSettings) -> NGramIndex:
    """Index every n-gram of every item. Raises if there are no items, or no item has n words."""
    items = list(items)
    if not items:
        raise DecontaminationError("the evaluation set is empty: no items to index")
    hashes, owners = [], []
    for begin in range(0, len(items), _BUILD_BATCH):
        batch = batch_ngram_hashes([item.text for item in items[begin: begin + _BUILD_BATCH]], settings)
        hashes.append(batch.hashes)
        owners.append(batch.text + begin)
    hashes, owners = np.concatenate(hashes), np.concatenate(owners).astype(np.int32)
    if not len(hashes):
        raise DecontaminationError(f"none of the {len(items)} evaluation items has {settings.n} words: no n-grams to "
                                   "index (use a smaller n)")
    order = np.lexsort((owners, hashes))
    hashes, owners = hashes[order], owners[order]
    pair_start = np.concatenate([[True], (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])])
    hashes, owners = hashes[pair_start], owners[pair_start]
    unique, first = np.unique(hashes, return_index=True)
    offsets = np.append(first, len(hashes)).astype(np.int64)
    return NGramIndex(settings, unique, offsets, owners, items)


def uncovered_items(index: NGramIndex) -> list[EvalItem]:
    """Items with fewer than n words: no n-gram of theirs is indexed, so no document can be found to hold them."""
    covered = np.zeros(len(index.items), bool)
    covered[index.item_ids] = True
    return [item for item, seen in zip(index.items, covered) if not seen]
