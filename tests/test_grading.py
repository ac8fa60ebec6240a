"""Answer extraction, normalization, equivalence and time-limited grading (rho_jax.evaluation answers/equivalence/grading).

The completions and answers are made up for these tests; each expected value follows from the
paper harness's rules (and was confirmed by running the harness's own parser.py/grader.py on it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rho_jax.evaluation.answers import NO_CHOICE, extract_answer, extract_boxed, strip_string
from rho_jax.evaluation.equivalence import math_equal
from rho_jax.evaluation.grading import Grades, grade_answers

# --- extraction rules and their precedence ---------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        # 1. Minerva's "final answer is $...$. I hope" wins over a boxed answer.
        ("Add.\n\\boxed{3}\nFinal Answer: The final answer is $4$. I hope it is correct.", "4"),
        # 2. A boxed answer wins over "The answer is"; the last boxed counts.
        ("The answer is 5. Also \\boxed{6} here.", "6"),
        ("First \\boxed{1}, then \\boxed{2}.", "2"),
        # 3. The text after the last "he answer is".
        ("The answer is 3. Wait, the answer is 7.", "7"),
        # 4. "final answer is" without Minerva's dollar signs.
        ("So my final answer is 12 apples", "12"),
        # 5. The last number, commas deleted first.
        ("We get 1,234 apples and -5.5 pears, then 1,250", "1250"),
        ("no digits here", ""),
        # Clean-up: leading ':' and trailing '.' dropped.
        ("The answer is: 42.", "42"),
        # A marker's text keeps its commas (equivalence ignores them later).
        ("The answer is \\$1,000.00.", "1,000"),
        ("The answer is 45^\\circ.", "45"),
        ("The answer is 8 cm.", "8"),
        ("The answer is x = 5", "5"),
        ("The answer is seven", "7"),
        # The normalization runs twice: the first pass leaves "2+3i." (its '.' strip ran before '$' went).
        ("The answer is $2+3i.$", "2+3i"),
        # \fbox is not a boxed answer for the harness: the last number is taken.
        ("Value \\fbox{3} and 9", "9"),
    ],
)
def test_free_form_extraction(completion: str, expected: str) -> None:
    assert extract_answer(completion, "latex") == expected
    assert extract_answer(completion, "number") == expected  # the two kinds follow the same rules


def test_normalization_is_applied_twice() -> None:
    assert strip_string("$2+3i.$") == "2+3i."
    assert strip_string(strip_string("$2+3i.$")) == "2+3i"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{1}{2}} ok", "\\frac{1}{2}"),
        ("\\boxed{a} and \\boxed{\\{x\\}}", "\\{x\\}"),
        ("unclosed \\boxed{\\frac{1}{2", "\\frac{1}{2"),
        ("So \\boxed 7$ and more", "7"),
        ("ends with \\boxed", ""),
        ("no box", None),
        ("\\fbox{3}", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("The answer is (B).", "B"),
        ("the choice is c", "C"),
        ("The Choice is C", NO_CHOICE),  # 'choice is' is replaced before lower-casing, so only lower-case counts
        ("answer is (d) then\nProblem: answer is (a)", "D"),
        ("Problem: x. The answer is A", NO_CHOICE),  # only the text before the first 'Problem:' counts
        ("answer is B and answer is C", "B"),  # the first match
        ("answer is F", NO_CHOICE),
    ],
)
def test_multiple_choice(completion: str, expected: str) -> None:
    assert extract_answer(completion, "choice") == expected


def test_bad_kind_and_completion() -> None:
    with pytest.raises(ValueError, match="unknown answer kind 'letter'; expected one of number, latex, choice"):
        extract_answer("The answer is 3", "letter")
    with pytest.raises(TypeError, match="completion must be a str"):
        extract_answer(None, "number")  # type: ignore[arg-type]


# --- normalization ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{72}", "\\frac{1}{72}"),
        ("3/4", "\\frac{3}{4}"),
        ("03/4", "03/4"),  # only plainly written integers become a fraction
        ("5\\text{ cm}", "5"),
        ("10 cm", "10"),
        ("5 meters", "5"),
        ("90^\\circ", "90"),
        ("\\$5.00", "5"),
        ("50\\%", "50"),
        (" 1 + 2 ", "1+2"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\text{(A)}", "(A)"),
        ("seven", "7"),
        ("x = 5", "5"),
        ("k=3", "3"),
        ("3 and 4", "34"),  # every 'and' is deleted
        ("a+b", "+b"),  # 'a' is a unit word
        ("2.50", "2.50"),
        ("2.000", "2"),
        (".5", "0.5"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("-inf", "-\\infty"),
        ("3j", "3i"),
        ("\\emptyset", "{}"),
        ("\\begin{array}{cc}1&2\\end{array}", "\\begin{pmatrix}1&2\\end{pmatrix}"),
        ("", ""),
    ],
)
def test_strip_string(raw: str, expected: str) -> None:
    assert strip_string(raw) == expected


# --- equivalence -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gold, lenient, strict",
    [
        # relative tolerance 1e-4, inclusive
        ("1.0001", "1", True, True),
        ("1.00011", "1", False, False),
        ("0.9999", "1", True, True),
        ("0.99989", "1", False, False),
        ("0", "0.00001", False, False),  # no absolute tolerance
        # percent leniency: gold/100 and gold*100 also match
        ("50", "0.5", True, False),
        ("0.5", "50", True, False),
        ("1,000", "1000", True, True),
        ("25%", "0.25", True, True),
        ("25\\%", "0.25", True, True),
        ("", "0", False, False),
    ],
)
def test_numbers(pred: str, gold: str, lenient: bool, strict: bool) -> None:
    assert math_equal(pred, gold) is lenient
    assert math_equal(pred, gold, percent_leniency=False) is strict


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\frac{1}{3}", "0.33333", True),
        ("\\frac{1}{3}", "0.33", False),
        ("(x+1)^2", "x^2+2x+1", True),
        ("\\pi", "3.14159", False),  # sympy's LaTeX parser reads \pi as a symbol, not the constant
        ("[1,2)", "(1,2]", True),  # intervals: parts compared, bracket kinds not
        ("(1,2)", "[1,2]", True),
        ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2.0\\end{pmatrix}", True),
        ("\\begin{pmatrix}1\\\\3\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
        ("y=2x+1", "2x+1=y", True),
        ("x=3", "3", True),
        ("3", "x=3", True),
        ("1", "1,-2", True),  # the harness's false positive: the LaTeX parser reads only '1' of '1,-2'
        ("2", "3", False),
    ],
)
def test_symbolic_and_structures(pred: str, gold: str, expected: bool) -> None:
    assert math_equal(pred, gold) is expected


def test_strings_are_not_evaluated_as_code(tmp_path: Path) -> None:
    target = tmp_path / "written"
    for pred in (f"open('{target}','w')", f"__import__('pathlib').Path('{target}').touch()"):
        assert math_equal(pred, "1") is False
    assert not target.exists()


def test_bad_input_types() -> None:
    with pytest.raises(TypeError, match="pred and gold must be str, got int and str"):
        math_equal(1, "1")  # type: ignore[arg-type]


# --- grading in worker processes with a time limit -------------------------------------------

# The parsers' time grows faster than linearly with a number's length: 4000 digits take ~12 s here, 20000 minutes.
SLOW_PRED, SLOW_GOLD = "0." + "7" * 20_000, "\\frac{5}{9}"


def test_grade_answers_with_time_limit() -> None:
    started = time.monotonic()
    grades = grade_answers(["1", "\\frac{1}{2}", "3", SLOW_PRED], ["1", "0.5", "4", SLOW_GOLD], timeout_s=2.0, workers=2)
    elapsed = time.monotonic() - started
    assert grades.correct == [True, True, False, False]
    assert grades.timed_out == [False, False, False, True]
    assert grades.timeouts == 1 and grades.crashes == 0
    assert grades.accuracy == 50.0
    assert elapsed < 30, f"grading took {elapsed:.0f} s: the slow comparison was not cut off"


def test_grade_answers_percent_leniency_and_empty() -> None:
    assert grade_answers(["50"], ["0.5"], workers=1).correct == [True]
    assert grade_answers(["50"], ["0.5"], percent_leniency=False, workers=1).correct == [False]
    assert grade_answers([], []) == Grades(correct=[], timed_out=[], crashed=[])


def test_grade_answers_bad_input() -> None:
    with pytest.raises(ValueError, match="2 predictions, 1 ground truths"):
        grade_answers(["1", "2"], ["1"])
    with pytest.raises(TypeError, match=r"golds\[1\] is a int"):
        grade_answers(["1", "2"], ["1", 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        grade_answers(["1"], ["1"], timeout_s=0)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        grade_answers(["1"], ["1"], workers=0)
