"""Whether a predicted answer equals the ground truth, decided as the paper's math evaluation harness decides it.

`math_equal(pred, gold)` takes both strings as the harness stores them (normalized by
`strip_string`) and returns at the first rule that settles it:

1. identical strings: equal;
2. both numbers (commas ignored; `float()` syntax, or a number followed by `%` or `\\%`, read as
   /100): equal iff `pred` is within relative 1e-4 of `gold`, or, with `percent_leniency` (the
   harness's default), of `gold / 100` or `gold * 100` -- so `0.5` matches `50`. This settles it;
3. `pred` empty: not equal;
4. (after stripping whitespace; a `pmatrix` prediction against a gold with `{a,b}` groups turns
   those groups into `pmatrix` columns) equal if the strings agree ignoring case, `{}()` anywhere,
   and, when `pred` is bracketed and the brackets are not `[..]` against `(..` or `(..)` against
   `[..`, the brackets at both ends;
5. both start with `(` or `[` and close with `)` or `]`: equal if they have the same number of
   comma-separated parts and each pair is `math_equal` (so `[1,2)` equals `(1,2]`: bracket kinds
   are not compared);
6. both `pmatrix`/`bmatrix` environments: equal if same shape and each cell pair is `math_equal`;
7. both single equations: equal if `lhs - (rhs)` of one is symbolically equal to that of the other
   or to its negation; one side an equation with a left side of at most 2 characters (`x=3`), the
   other none: its right side is compared by `math_equal`;
8. otherwise `symbolic.symbolic_equal` (sympy).

A failed rule 4-7 falls through to the next. Pathological inputs can make rule 8 slow: run
comparisons through `grading.grade_answers`, which enforces a time limit.
"""

from __future__ import annotations

import math
import re

from rho_jax.evaluation.symbolic import RELATIVE_TOLERANCE, symbolic_equal

_BRACKETED = re.compile(r"[(\[].+[)\]]")
_BRACE_GROUP_WITH_COMMA = re.compile(r"\{.*,.*\}")
_MATRIX_BEGINS = ("\\begin{pmatrix}", "\\begin{bmatrix}")
_MATRIX_ENDS = ("\\end{pmatrix}", "\\end{bmatrix}")
_MATRIX_ROW_BREAK = "\\\\"
_MAX_LEFT_SIDE = 2  # `x=3`, `ab=3`: a short left side names the unknown


def math_equal(pred: str, gold: str, *, percent_leniency: bool = True) -> bool:
    """True if `pred` counts as `gold` by the rules of the module docstring."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        raise TypeError(f"pred and gold must be str, got {type(pred).__name__} and {type(gold).__name__}")
    if pred == gold:
        return True
    pred_number, gold_number = parse_number(pred), parse_number(gold)
    if pred_number is not None and gold_number is not None:
        return numbers_equal(pred_number, gold_number, percent_leniency=percent_leniency)
    if not pred:
        return False
    pred, gold = pred.strip(), gold.strip()
    if "pmatrix" in pred and "pmatrix" not in gold:
        gold = _brace_groups_as_pmatrix(gold)
    return (
        _same_ignoring_brackets(pred, gold)
        or _same_sequence(pred, gold, percent_leniency)
        or _same_matrix(pred, gold, percent_leniency)
        or _same_equation(pred, gold, percent_leniency)
        or symbolic_equal(pred, gold)
    )


def parse_number(text: str) -> float | None:
    """`text` as a float (commas ignored; a trailing `%` or `\\%` divides by 100), or None."""
    text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        pass
    if not text.endswith("%"):
        return None
    try:
        return float(text[:-1].removesuffix("\\")) / 100
    except ValueError:
        return None


def numbers_equal(pred: float, gold: float, *, percent_leniency: bool = True) -> bool:
    """`pred` within relative 1e-4 of `gold` (or, with `percent_leniency`, of `gold / 100` or `gold * 100`)."""
    targets = (gold / 100, gold, gold * 100) if percent_leniency else (gold,)
    return any(math.isclose(target, pred, rel_tol=RELATIVE_TOLERANCE) for target in targets)


def _brace_groups_as_pmatrix(gold: str) -> str:
    """Each `{...,...}` group of `gold` as a `pmatrix` column (commas -> `\\`), joined by ', '; '' if none."""
    groups = _BRACE_GROUP_WITH_COMMA.findall(gold)
    return ", ".join("\\begin{pmatrix}" + g.strip("{}").replace(",", "\\") + "\\end{pmatrix}" for g in groups)


def _same_ignoring_brackets(pred: str, gold: str) -> bool:
    """Rule 4 of the module docstring."""
    square = pred.startswith("[") and pred.endswith("]") and not gold.startswith("(")
    round_ = pred.startswith("(") and pred.endswith(")") and not gold.startswith("[")
    if square or round_:
        pred, gold = pred.strip("[]()"), gold.strip("[]()")
    drop = str.maketrans("", "", "{}()")
    return pred.translate(drop).lower() == gold.translate(drop).lower()


def _same_sequence(pred: str, gold: str, percent_leniency: bool) -> bool:
    """Rule 5: intervals and tuples, part by part (every part is compared, like the harness, so time-outs match)."""
    if not (_BRACKETED.match(pred) and _BRACKETED.match(gold)):
        return False
    pred_parts, gold_parts = pred[1:-1].split(","), gold[1:-1].split(",")
    if len(pred_parts) != len(gold_parts):
        return False
    return all([math_equal(p, g, percent_leniency=percent_leniency) for p, g in zip(pred_parts, gold_parts)])


def _same_matrix(pred: str, gold: str, percent_leniency: bool) -> bool:
    """Rule 6: same rows and cells; rows are compared in order and the first unequal row stops."""
    if not all(s.startswith(_MATRIX_BEGINS) and s.endswith(_MATRIX_ENDS) for s in (pred, gold)):
        return False
    pred_rows, gold_rows = _matrix_rows(pred), _matrix_rows(gold)
    if len(pred_rows) != len(gold_rows):
        return False
    for pred_row, gold_row in zip(pred_rows, gold_rows):
        pred_cells, gold_cells = pred_row.split("&"), gold_row.split("&")
        if len(pred_cells) != len(gold_cells):
            return False
        if not all([math_equal(p, g, percent_leniency=percent_leniency) for p, g in zip(pred_cells, gold_cells)]):
            return False
    return True


def _matrix_rows(matrix: str) -> list[str]:
    """The non-empty, stripped rows between `\\begin{..matrix}` and `\\end{..matrix}`."""
    body = matrix[len(_MATRIX_BEGINS[0]) : -len(_MATRIX_ENDS[0])]
    return [row.strip() for row in body.split(_MATRIX_ROW_BREAK) if row.strip()]


def _same_equation(pred: str, gold: str, percent_leniency: bool) -> bool:
    """Rule 7 of the module docstring."""
    if pred.count("=") == 1 and gold.count("=") == 1:
        pred_zero, gold_zero = _as_difference(pred), _as_difference(gold)
        return symbolic_equal(pred_zero, gold_zero) or symbolic_equal(f"-({pred_zero})", gold_zero)
    if pred.count("=") == 1 and _short_left_side(pred) and "=" not in gold:
        return math_equal(pred.split("=")[1], gold, percent_leniency=percent_leniency)
    if gold.count("=") == 1 and _short_left_side(gold) and "=" not in pred:
        return math_equal(pred, gold.split("=")[1], percent_leniency=percent_leniency)
    return False


def _as_difference(equation: str) -> str:
    """`lhs=rhs` -> `lhs - (rhs)` (sides stripped)."""
    lhs, rhs = equation.split("=")
    return f"{lhs.strip()} - ({rhs.strip()})"


def _short_left_side(equation: str) -> bool:
    return len(equation.split("=")[0].strip()) <= _MAX_LEFT_SIDE
