"""Few-shot prompts as the paper's harness builds them.

    prompt = exemplars + "\\n\\n\\n" + query          (just `query` when a task has no exemplars)
    query  = query_template with {question} replaced by the sample's question

`exemplars` is the exemplar file's text, read as-is (no unescaping: a file's literal `\\\\frac`
stays two backslashes) and stripped of surrounding whitespace; exemplars made from training
rows follow it, each stripped, joined by "\\n\\n\\n" too.

An exemplar file holds exemplars separated by blank lines; each starts with the query template's
text before {question} (e.g. "Question: ") and has the text after it (e.g. "\\nAnswer:") before its
solution. A solution may itself contain blank lines: a paragraph that does not start like a query
continues the exemplar before it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

from rho_jax.evaluation.task_config import TaskError

EXEMPLAR_SEPARATOR = "\n\n\n"


def split_query_template(template: str) -> tuple[str, str]:
    """(text before {question}, text after it) of a query template with exactly one {question} slot."""
    before: list[str] = []
    after: list[str] = []
    seen = False
    for literal, name, _, _ in string.Formatter().parse(template):
        (after if seen else before).append(literal)
        if name is not None:
            seen = True
    return "".join(before), "".join(after)


def render_query(template: str, question: str) -> str:
    prefix, suffix = split_query_template(template)
    return prefix + question + suffix


def build_prompt(exemplar_blocks: Sequence[str], query_template: str, question: str) -> str:
    """The model's prompt: the exemplar blocks, then the sample's query, separated by two blank lines."""
    query = render_query(query_template, question)
    return EXEMPLAR_SEPARATOR.join([*exemplar_blocks, query])


def read_exemplar_file(path: Path, query_template: str, task: str) -> tuple[str, int]:
    """(the file's stripped text, its number of exemplars), after checking the file's layout."""
    if not path.is_file():
        raise TaskError(f"task {task!r}: exemplar file {path} does not exist (check --fewshot-dir)")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise TaskError(f"task {task!r}: exemplar file {path} is empty")
    return text, len(_exemplars(text, query_template, f"task {task!r}: exemplar file {path}"))


def _exemplars(text: str, query_template: str, where: str) -> list[str]:
    """The exemplars of a stripped exemplar file, or TaskError naming the first layout problem."""
    prefix, suffix = split_query_template(query_template)
    head = prefix.split("\n")[0]
    exemplars: list[list[str]] = []
    line = 1
    for paragraph, separator in _paragraphs(text):
        if paragraph.startswith(prefix) or not exemplars:
            if not paragraph.startswith(prefix):
                raise TaskError(f"{where}: does not start with an exemplar; its first line should begin with "
                                f"{prefix!r} like the query template {query_template!r}")
            exemplars.append([])
            start = line
        later_lines = paragraph.split("\n")[1:] if not exemplars[-1] else paragraph.split("\n")
        if head.strip() and any(later.startswith(head) for later in later_lines):
            raise TaskError(f"{where}: exemplar {len(exemplars)} (line {start}) runs into another {head!r} line; "
                            "separate exemplars with a blank line")
        exemplars[-1].append(paragraph)
        line += paragraph.count("\n") + separator.count("\n")
    for number, paragraphs in enumerate(exemplars, 1):
        body = "\n\n".join(paragraphs)[len(prefix):]
        if suffix and suffix not in body:
            raise TaskError(f"{where}: exemplar {number} has no {suffix!r} after its question, as the query "
                            f"template {query_template!r} requires")
    return ["\n\n".join(paragraphs) for paragraphs in exemplars]


def _paragraphs(text: str) -> list[tuple[str, str]]:
    """(paragraph, the blank-line separator after it) pairs of a text split at blank lines."""
    pieces = re.split(r"(\n[ \t]*\n(?:[ \t]*\n)*)", text)
    return [(pieces[i], pieces[i + 1] if i + 1 < len(pieces) else "") for i in range(0, len(pieces), 2)]
