"""Question/answer parsers of generated text.

genstruct: the completion continues the prompt's "[[[User]]] ": the question is the text before
  "[[[Assistant]]]", the answer the text after it up to a next "[[[User]]]" (if any).
qa-markers: "[[Q]] question [[A]] answer": the question is the text after "[[Q]]" (or from the
  start when there is no "[[Q]]") up to "[[A]]", the answer the text after "[[A]]" up to a next
  "[[Q]]" (only the first pair is taken).
Both strip surrounding whitespace. No answer marker -> `Parsed(question, None)`.
`MARKERS[parser]` are the markers a parser splits at; one left inside a parsed question or answer is
a stray marker (`rho_jax.synthesis.validation`).
"""

from __future__ import annotations

import dataclasses

PARSERS = ("genstruct", "qa-markers")
MARKERS: dict[str, tuple[str, ...]] = {"genstruct": ("[[[User]]]", "[[[Assistant]]]"), "qa-markers": ("[[Q]]", "[[A]]")}


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A completion's question and answer; `answer` None when the answer marker is missing."""

    question: str
    answer: str | None


def _split(text: str, question_marker: str | None, answer_marker: str, next_marker: str) -> Parsed:
    if question_marker is not None and question_marker in text.split(answer_marker, 1)[0]:
        text = text.split(question_marker, 1)[1]
    if answer_marker not in text:
        return Parsed(text.strip(), None)
    question, answer = text.split(answer_marker, 1)
    return Parsed(question.strip(), answer.split(next_marker, 1)[0].strip())


def parse(parser: str, text: str) -> Parsed:
    """The question and answer in `text` by `parser` (one of PARSERS; see the module docstring)."""
    if parser == "genstruct":
        user, assistant = MARKERS[parser]
        return _split(text, None, assistant, user)
    if parser == "qa-markers":
        question, answer = MARKERS[parser]
        return _split(text, question, answer, question)
    raise ValueError(f"unknown parser {parser!r}; choose one of {PARSERS}.")
