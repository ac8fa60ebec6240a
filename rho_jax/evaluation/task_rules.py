"""The declarative vocabulary task specs use to turn a data row into a question and a ground truth.

Question templates are text with `{field}` or `{field|filter|filter...}` slots (`{{`/`}}` for literal
braces). A slot renders the row's field with `str()` after the filters, applied left to right:

    strip             surrounding whitespace removed
    end_period        "." appended unless the text already ends with "."
    capitalize_first  first character upper-cased, the rest unchanged
    lettered_choices  a list of options -> "(A) opt1, (B) opt2, ..." (each option stripped)
    sat_options       "A) x B) y C) z" -> "(A) x (B) y (C) z" (SAT's option string)
    mathqa_options    "a ) x , b ) y" or a list literal "['a ) x', ...]" -> "(A) x, (B) y" (MathQA's options)
    tabmwp_title      a table title T -> 'regarding "T" ' ("" when the title is empty or null)
    tabmwp_choices    a list of choices C -> " Please select from the following options: " + str(C)
                      ("" when empty or null)

Only the two tabmwp filters accept a null value. The rendered question gets " (True or False)" /
" (Yes or No)" appended when the ground truth is one of those words, and is stripped (as the
paper's harness does for every dataset; see `finish_question`).

Ground-truth rules read the spec's gt field and give (gt_cot, gt); `gt` is the rule's answer
normalized by the harness's `strip_string`, as the harness stores it:

    after_hashes         "<solution> #### <answer>": gt_cot = the solution, gt = the part after ####
    boxed_in             a worked solution: gt_cot = the solution, gt = what the harness's answer
                         extractor reads from it (its last \\boxed{...}), extract_answer(solution, "latex"),
                         normalized once more (three passes in all, as the harness does for MATH
                         ground truths; one pass is not idempotent, e.g. "x \\in [-2,7]")
    choice_letter        a letter a-e or A-E -> upper case
    choice_index         an int 0-4 -> "A".."E"
    number               a number or a string, written with str() (5.0 -> "5.0", then normalized to "5")
    without_parentheses  text with every "(...)" removed ("9 (apples)" -> "9 ")
    tabmwp_answer        TabMWP: when the row's `ans_type` is integer_number/decimal_number the answer
                         string is read as a float ("3/4" -> a/b, "1,200" -> commas dropped,
                         "25%" -> /100); other answers are kept as text
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rho_jax.evaluation.answers import extract_answer, strip_string


class RowError(ValueError):
    """A data row whose content a template filter or a ground-truth rule cannot read."""


@dataclass(frozen=True)
class Slot:
    """One `{field|filter...}` slot of a question template."""

    field: str
    filters: tuple[str, ...]


def _text(value: Any) -> str:
    if value is None:
        raise RowError("is null")
    return str(value)


def _strip(value: Any) -> str:
    return _text(value).strip()


def _end_period(value: Any) -> str:
    text = _text(value)
    return text if text.endswith(".") else text + "."


def _capitalize_first(value: Any) -> str:
    text = _text(value)
    return text[:1].upper() + text[1:]


def _lettered_choices(value: Any) -> str:
    if not isinstance(value, list) or not value:
        raise RowError(f"must be a non-empty list of options for lettered_choices, got {value!r}")
    if len(value) > 26:
        raise RowError(f"has {len(value)} options; lettered_choices labels at most 26 (A-Z)")
    return ", ".join(f"({chr(ord('A') + i)}) {str(option).strip()}" for i, option in enumerate(value))


def _sat_options(value: Any) -> str:
    text = _strip(value)
    if not text.startswith("A"):
        raise RowError(f"must start with the option label 'A)' for sat_options, got {text[:40]!r}")
    text = "(" + text
    for letter in "BCD":
        text = text.replace(f" {letter}) ", f" ({letter}) ")
    return text.strip()


def _mathqa_options(value: Any) -> str:
    text = _strip(value)
    if text.startswith("["):
        try:
            options = ast.literal_eval(text)
        except (ValueError, SyntaxError) as err:
            raise RowError(f"looks like a list but is not a valid list literal ({err})") from None
        text = ", ".join(options)
    if not text.startswith("a"):
        raise RowError(f"must start with the option label 'a )' for mathqa_options, got {text[:40]!r}")
    for letter in "abcde":
        label = f"{letter} ) "
        if label in text:
            text = text.replace(label + label, label).replace(label, f"({letter.upper()}) ")
    return text.replace(" , ", ", ").strip()


def _tabmwp_title(value: Any) -> str:
    return f'regarding "{value}" ' if value else ""


def _tabmwp_choices(value: Any) -> str:
    return f" Please select from the following options: {value}" if value else ""


FILTERS: dict[str, Callable[[Any], str]] = {
    "strip": _strip,
    "end_period": _end_period,
    "capitalize_first": _capitalize_first,
    "lettered_choices": _lettered_choices,
    "sat_options": _sat_options,
    "mathqa_options": _mathqa_options,
    "tabmwp_title": _tabmwp_title,
    "tabmwp_choices": _tabmwp_choices,
}
NULLABLE_FILTERS = frozenset({"tabmwp_title", "tabmwp_choices"})


def parse_template(template: str) -> list[str | Slot]:
    """Split a question template into literal text and slots; ValueError names what is malformed."""
    parts: list[str | Slot] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"slot {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                             "uses a format spec or conversion; only {field} or {field|filter} is allowed")
        field, *filters = [piece.strip() for piece in name.split("|")]
        if not field:
            raise ValueError("has an empty slot {} (name the row field, e.g. {question})")
        unknown = [f for f in filters if f not in FILTERS]
        if unknown:
            raise ValueError(f"slot {{{name}}} uses unknown filter(s) {unknown}; allowed: {sorted(FILTERS)}")
        parts.append(Slot(field, tuple(filters)))
    return parts


def template_fields(parts: list[str | Slot]) -> list[str]:
    """The row fields a parsed template reads, in order of first use."""
    return list(dict.fromkeys(part.field for part in parts if isinstance(part, Slot)))


def render(parts: list[str | Slot], row: dict[str, Any]) -> str:
    """The template filled from `row` (every slot's field must be present; RowError names a bad one)."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = row[part.field]
        try:
            if value is None and not (part.filters and part.filters[0] in NULLABLE_FILTERS):
                raise RowError("is null")
            for name in part.filters:
                value = FILTERS[name](value)
            out.append(_text(value))
        except RowError as err:
            raise RowError(f"field {part.field!r} {err}") from None
    return "".join(out)


def finish_question(question: str, gt: str) -> str:
    """The final question: a True/False or Yes/No hint appended when the gt is such a word, then stripped."""
    if gt.lower() in ("true", "false"):
        question += " (True or False)"
    if gt.lower() in ("yes", "no"):
        question += " (Yes or No)"
    return question.strip()


def _normalized(answer: Any) -> str:
    return strip_string(str(answer))


def _after_hashes(value: Any, row: dict[str, Any]) -> tuple[str | None, str]:
    parts = _text(value).split("####")
    if len(parts) != 2:
        raise RowError(f"must contain '####' exactly once (solution #### answer), found it {len(parts) - 1} times")
    return parts[0], _normalized(parts[1])


def _boxed_in(value: Any, row: dict[str, Any]) -> tuple[str | None, str]:
    solution = _text(value)
    return solution, _normalized(extract_answer(solution, "latex"))


def _choice_letter(value: Any, row: dict[str, Any]) -> tuple[str | None, str]:
    letter = _text(value).upper()
    if letter not in ("A", "B", "C", "D", "E"):
        raise RowError(f"must be a choice letter A-E (either case), got {value!r}")
    return None, _normalized(letter)


def _choice_index(value: Any, row: dict[str, Any]) -> tuple[str | None, str]:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        raise RowError(f"must be a choice index 0-4 (A-E), got {value!r}")
    return None, _normalized("ABCDE"[value])


def _number(value: Any, row: dict[str, Any]) -> tuple[str | None, str]:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RowError(f"must be a number or a string, got {value!r}")
    return None, _normalized(value)


def _without_parentheses(value: Any, row: dict[str, Any]) -> tuple[str | None, str]:
    return None, _normalized(re.sub(r"\(.*?\)", "", _text(value)))


TABMWP_NUMERIC_TYPES = ("integer_number", "decimal_number")


def _tabmwp_answer(value: Any, row: dict[str, Any]) -> tuple[str | None, str]:
    if "ans_type" not in row:
        raise RowError("needs the row's `ans_type` field (rule tabmwp_answer), which is missing")
    text = _text(value)
    if row["ans_type"] not in TABMWP_NUMERIC_TYPES:
        return None, _normalized(text)
    try:
        if "/" in text:
            numerator, denominator = text.split("/")[:2]
            number = int(numerator) / int(denominator)
        elif "," in text:
            number = float(text.replace(",", ""))
        elif "%" in text:
            number = float(text.split("%")[0]) / 100
        else:
            number = float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise RowError(f"is not a number although ans_type is {row['ans_type']!r} ({err})") from None
    return None, _normalized(number)


GT_RULES: dict[str, Callable[[Any, dict[str, Any]], tuple[str | None, str]]] = {
    "after_hashes": _after_hashes,
    "boxed_in": _boxed_in,
    "choice_letter": _choice_letter,
    "choice_index": _choice_index,
    "number": _number,
    "without_parentheses": _without_parentheses,
    "tabmwp_answer": _tabmwp_answer,
}
# Rules whose gt_cot comes from the gt field itself; the others may name a separate `cot_field`.
RULES_WITH_COT = frozenset({"after_hashes", "boxed_in"})


def ground_truth(rule: str, field: str, cot_field: str | None, row: dict[str, Any]) -> tuple[str | None, str]:
    """(gt_cot or None, gt) of `row`: gt_cot stripped, gt normalized by the rule."""
    try:
        cot, gt = GT_RULES[rule](row[field], row)
    except RowError as err:
        raise RowError(f"field {field!r} {err}") from None
    if cot_field is not None:
        cot = row[cot_field]
    return (None if cot is None else str(cot).strip()), gt
