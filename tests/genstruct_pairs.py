"""Made-up documents and their question/answer pairs in Genstruct's format, for the LoRA -> synthesis proof.

A document states one fact made from a pattern with random names, items, places and numbers
(plus a filler sentence); its pair asks for that fact in other words (so the question does not
copy the text) and answers it. As a supervised row, the prompt is the shipped `genstruct`
template rendered with the document (ending with "[[[User]]] ") and the response is what Genstruct
writes after it: the question, a new line, "[[[Assistant]]] " and the answer.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from rho_jax.synthesis import load_template

NAMES = ["Natalia", "Tomas", "Amira", "Kenji", "Lucia", "Omar", "Priya", "Sven", "Ines", "Jonas", "Mei", "Pablo",
         "Hana", "Viktor", "Leila", "Dmitri", "Zara", "Felix", "Noor", "Mateo", "Yuki", "Elena", "Kofi", "Greta"]
ITEMS = ["clips", "books", "apples", "tickets", "shells", "stamps", "cards", "kites", "candles", "maps"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
CITIES = ["Lisbon", "Osaka", "Nairobi", "Quito", "Oslo", "Hanoi", "Tunis", "Perth", "Riga", "Lima", "Cork", "Porto"]
JOBS = ["baker", "nurse", "pilot", "teacher", "farmer", "painter", "tailor", "chemist"]
PLACES = ["library", "museum", "bridge", "stadium", "market", "theater"]
FILLERS = ["Everyone agreed it was a good result.", "The weather was mild that year.", "Nobody expected it.",
           "It was reported in the local paper.", "Friends still talk about it."]

# (title, fact sentence, question, answer) patterns over the fields of `_fields`.
PATTERNS = [
    ("{name}'s {item}", "{name} sold {n} {item} to friends in {month}.",
     "How many {item} did {name} sell in {month}?", "{name} sold {n} {item}."),
    ("{name} in {city}", "{name} has lived in {city} for {n} years and works as a {job}.",
     "What does {name} do in {city}?", "{name} is a {job}."),
    ("The {place} of {city}", "The {place} of {city} opened in {year} after {n} months of work.",
     "When did {city} get its {place}?", "It opened in {year}."),
    ("{name}'s trip", "In {month}, {name} travelled {n} kilometres to visit {city}.",
     "Where did {name} go in {month}?", "{name} went to {city}."),
]


@dataclasses.dataclass(frozen=True)
class Example:
    """One made-up document with its question and answer."""

    id: str
    title: str
    text: str
    question: str
    answer: str

    def document(self) -> dict[str, str]:
        """The document as a synthesis input row (`rho_jax.synthesis.documents`)."""
        return {"id": self.id, "title": self.title, "text": self.text}

    def sft_row(self) -> dict[str, str]:
        """The supervised row: prompt = the rendered genstruct template, response = question and answer."""
        return {"prompt": load_template("genstruct").text(self.text, self.title),
                "response": f"{self.question}\n[[[Assistant]]] {self.answer}"}


def _fields(rng: random.Random) -> dict[str, object]:
    return {"name": rng.choice(NAMES), "item": rng.choice(ITEMS), "month": rng.choice(MONTHS), "city": rng.choice(CITIES),
            "job": rng.choice(JOBS), "place": rng.choice(PLACES), "n": rng.randint(2, 99), "year": rng.randint(1900, 2020)}


def make_examples(count: int, seed: int, prefix: str = "doc", distinct: bool = False) -> list[Example]:
    """`count` examples, the patterns in turn, fields drawn from `random.Random(seed)`; `distinct`:
    no two with the same question (a model that answers every document right then makes no duplicate)."""
    rng = random.Random(seed)
    examples: list[Example] = []
    questions: set[str] = set()
    while len(examples) < count:
        title, fact, question, answer = PATTERNS[len(examples) % len(PATTERNS)]
        fields = _fields(rng)
        text = f"{fact.format(**fields)} {rng.choice(FILLERS)}"
        if distinct and question.format(**fields) in questions:
            continue
        questions.add(question.format(**fields))
        examples.append(Example(f"{prefix}{len(examples)}", title.format(**fields), text, question.format(**fields),
                                answer.format(**fields)))
    return examples


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
