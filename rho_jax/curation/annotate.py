"""Quality labels for a sample of documents: asked of a local model through `rho_jax.generation`, or read from JSONL.

Rubrics (prompt templates with a `{document}` slot, and how an answer is read):
    edu   fineweb-edu style additive 0-5 rubric; the answer is the number after the LAST "Score:" (or "score =")
          in the completion. No such number -> unparseable; a number that is not an integer 0..5 -> out_of_range.
    phi   phi-1's educational-value question; the answer is the completion's first word: yes -> 1, no -> 0
          (case and surrounding punctuation ignored); anything else -> unparseable.
Documents longer than the token budget are cut before they go into the prompt (keeping the start).

A labels file (`write_labels`) is JSONL with one object per labelled document: `id`, `text`, `label` (an
integer on the rubric's scale) and, for model labels, `annotation` (the completion). It is a corpus in its
own right: `quality embed` reads it like any other, and `label` travels into each document's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from datatrove.data import Document

from rho_jax.curation.classifier import SCALES, LabelScale
from rho_jax.generation import SamplingParams
from rho_jax.jsonl import json_objects

EDU_TEMPLATE = """You are grading web pages for a collection of study material in mathematics and science.
Read the extract below and add up points with this rubric:
- 1 point if it contains any information that could help someone learn, even when mixed with adverts,
  navigation text or other clutter.
- 1 more point if it explains something relevant to school or university learning, even if it is
  incomplete, loosely organised or partly off topic.
- 1 more point if it would fit in a lesson: it introduces ideas a curriculum covers, in coherent prose,
  with little irrelevant material.
- 1 more point if it is focused teaching material, like a textbook section or a worked tutorial, clear
  enough for a student to follow on their own.
- 1 more point if it is excellent for learning: it reasons step by step, shows worked examples or
  exercises with solutions, and has nothing distracting in it.

Extract:
{document}

Justify the grade in at most three sentences, then end with a line of the form "Score: N", where N is
the total number of points (0 to 5).
Justification:"""

PHI_TEMPLATE = """Would the following text help a student who is learning basic mathematics or programming? Answer
with one word, yes or no.

Text:
{document}

Answer (yes or no):"""

OK, UNPARSEABLE, OUT_OF_RANGE = "ok", "unparseable", "out_of_range"
_SCORE = re.compile(r"score\s*[:=]\s*\**\s*([+-]?\d+(?:\.\d+)?)", re.IGNORECASE)
_YES_NO = re.compile(r"^[\W_]*(yes|no)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A parsed completion: `label` (None unless status is "ok") and `status` (ok / unparseable / out_of_range)."""

    label: int | None
    status: str


def parse_score(completion: str, scale: LabelScale) -> Answer:
    """The number after the last "Score:" in `completion` as a label on `scale` (see the module docstring)."""
    matches = _SCORE.findall(completion)
    if not matches:
        return Answer(None, UNPARSEABLE)
    value = float(matches[-1])
    if not value.is_integer() or not 0 <= value <= scale.max_label:
        return Answer(None, OUT_OF_RANGE)
    return Answer(int(value), OK)


def parse_yes_no(completion: str) -> Answer:
    """1 for a completion whose first word is yes, 0 for no, else unparseable."""
    match = _YES_NO.match(completion.strip())
    if match is None:
        return Answer(None, UNPARSEABLE)
    return Answer(1 if match.group(1).lower() == "yes" else 0, OK)


@dataclasses.dataclass(frozen=True)
class Rubric:
    """A prompt `template` ({document} slot), the `scale` of its labels and how much the model may answer."""

    name: str
    template: str
    scale: LabelScale
    max_new_tokens: int
    stop: tuple[str, ...]

    def prompt(self, document: str) -> str:
        return self.template.replace("{document}", document)

    def parse(self, completion: str) -> Answer:
        return parse_score(completion, self.scale) if self.scale.max_label > 1 else parse_yes_no(completion)


RUBRICS = {
    "edu": Rubric("edu", EDU_TEMPLATE, SCALES["edu"], max_new_tokens=160, stop=()),
    "phi": Rubric("phi", PHI_TEMPLATE, SCALES["binary"], max_new_tokens=4, stop=("\n",)),
}


def sample_documents(documents: Iterable[Document], size: int, seed: int = 0) -> list[Document]:
    """A uniform random sample of `size` documents (all of them if fewer), by reservoir sampling in one pass;
    in the order they were read."""
    if size < 1:
        raise ValueError(f"the sample size must be >= 1, got {size}.")
    rng = random.Random(seed)
    reservoir: list[tuple[int, Document]] = []
    for index, doc in enumerate(documents):
        if index < size:
            reservoir.append((index, doc))
        elif (slot := rng.randrange(index + 1)) < size:
            reservoir[slot] = (index, doc)
    return [doc for _, doc in sorted(reservoir, key=lambda item: item[0])]


class _Completion(Protocol):
    text: str


class _Generator(Protocol):
    tokenizer: Any
    max_length: int

    def generate(self, prompts: list[str], params: Any, *, progress: bool = True) -> Iterator[tuple[int, _Completion]]: ...


@dataclasses.dataclass
class Annotations:
    """Model labels of a sample: `labelled` and `rejected` records, and `counts` by status and label."""

    labelled: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    counts: dict[str, Any]


def fit_document(text: str, generator: _Generator, rubric: Rubric, max_document_tokens: int) -> str:
    """`text` cut to its first tokens so that the prompt and the answer fit the model's context (and at most
    `max_document_tokens` tokens of it are shown)."""
    tokenizer = generator.tokenizer
    overhead = len(tokenizer(rubric.prompt(""), add_special_tokens=True)["input_ids"])
    budget = min(max_document_tokens, generator.max_length - rubric.max_new_tokens - overhead - 1)
    if budget < 1:
        raise ValueError(f"the {rubric.name} prompt ({overhead} tokens) and its answer ({rubric.max_new_tokens} tokens) "
                         f"leave no room for a document in the model's context of {generator.max_length} tokens.")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= budget else tokenizer.decode(ids[:budget])


def annotate_documents(documents: list[Document], generator: _Generator, rubric: Rubric, *,
                       max_document_tokens: int = 512, progress: bool = True) -> Annotations:
    """Greedy completions of `rubric`'s prompt for every document, parsed into labels."""
    prompts = [rubric.prompt(fit_document(doc.text, generator, rubric, max_document_tokens)) for doc in documents]
    params = SamplingParams(max_new_tokens=rubric.max_new_tokens, temperature=0.0, stop=rubric.stop)
    answers: dict[int, tuple[str, Answer]] = {}
    for index, completion in generator.generate(prompts, params, progress=progress):
        answers[index] = (completion.text, rubric.parse(completion.text))
    labelled, rejected = [], []
    for index, doc in enumerate(documents):
        text, answer = answers[index]
        record = {"id": doc.id, "text": doc.text, "annotation": text}
        if answer.status == OK:
            labelled.append({**record, "label": answer.label})
        else:
            rejected.append({**record, "status": answer.status})
    statuses = Counter(answer.status for _, answer in answers.values())
    counts = {"rubric": rubric.name, "documents": len(documents), **{s: statuses[s] for s in (OK, UNPARSEABLE, OUT_OF_RANGE)},
              "labels": {str(k): sum(r["label"] == k for r in labelled) for k in range(rubric.scale.max_label + 1)}}
    return Annotations(labelled, rejected, counts)


def read_labels(path: str | Path, scale: LabelScale, text_key: str = "text") -> list[dict[str, Any]]:
    """The labelled documents of a JSONL file (human or LLM labels): every row an object with a string
    `text_key` field and an integer `label` on `scale`; a ValueError naming the line of the first bad row.
    Each record gets `id` (its own, else `file:line`) and `text`; other fields are kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist.")
    records = []
    for where, row in json_objects(path):
        if not isinstance(row.get(text_key), str) or "label" not in row:
            raise ValueError(f"{where}: a labels row must be an object with a string {text_key!r} and a 'label'; "
                             f"got the fields {sorted(row)}")
        label = scale.check(row["label"], str(where))
        text = row.pop(text_key)
        records.append({**row, "id": str(row.get("id", f"{path.name}:{where.number}")), "text": text, "label": label})
    if not records:
        raise ValueError(f"labels file {path} holds no rows.")
    return records


def write_labels(path: str | Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
