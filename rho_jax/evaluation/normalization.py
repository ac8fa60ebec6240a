"""Answer normalization of the paper's math evaluation harness (its `strip_string`), step for step.

`strip_string(s)` rewrites an answer string into the form the harness compares: LaTeX spacing and
sizing commands, units, degrees, dollars, percent signs, `\\text{}` and variable prefixes
(`x=`) removed, `\\dfrac`/`\\tfrac` -> `\\frac`, `\\frac12` -> `\\frac{1}{2}`, `a/b` -> `\\frac{a}{b}`
for integers, number words -> digits, `2.000` -> `2`, spaces dropped. The steps run in the
harness's order and keep its quirks (a verdict depends on them): e.g. every `and` is deleted
anywhere in the string, a unit word is removed wherever it stands alone (`5 m` -> `5`, but also
`a + b` -> `+ b`), and unit words are regular expressions (`.` in `rs .` matches any character).
The function is not idempotent: the harness applies it twice to predictions.
"""

from __future__ import annotations

import re

from word2number import w2n

# Unit words the harness deletes (mostly from MathQA), in the harness's order, duplicates
# included: each is a regular expression applied in turn, so order and repetition change results.
_UNIT_WORDS: tuple[str, ...] = (
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile",
    "q .", "monkey", "prime", "ratio", "profit of rs", "rd", "o", "gm",
    "p . m", "lb", "tile", "per", "dm", "lt", "gain", "ab", "way", "west",
    "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h",
    "no change", "men", "soldier", "pie", "bc", "excess", "st",
    "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise",
    "a . m", "th", "π r 2", "sq", "mark", "l", "toy", "coin",
    "sq . m", "gallon", "° f", "profit", "minw", "yr", "women",
    "feet", "am", "pm", "hr", "cu cm", "square", "v â € ™", "are",
    "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm", "number",
    "kmph", "day", "hour", "minute", "min", "second", "man", "woman",
    "sec", "cube", "mt", "sq inch", "mp", "∏ cm ³", "hectare", "more",
    "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month",
    "km", "m", "cm", "mm", "apple", "liter", "loss", "yard",
    "pure", "year", "increase", "decrease", "d", "less", "Surface",
    "litre", "pi sq m", "s .", "metre", "meter", "inch",
)  # fmt: skip
# Every word, then every word + "s"; a match needs a non-word character or an end on both sides.
_UNIT_PATTERNS = tuple(re.compile(r"(^|\W)" + word + r"($|\W)") for word in (*_UNIT_WORDS, *(w + "s" for w in _UNIT_WORDS)))
_UNIT_PASSES = 2

_VARIABLE_PREFIXES = ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to")

_ARRAY_BEGIN = re.compile(r"\\begin\{array\}\{.*?\}")
_TRAILING_TEXT = re.compile(r"\\text\{.*?\}$")
_TEXT = re.compile(r"\\text\{(.*?)\}")
_MBOX = re.compile(r"\\mbox\{.*?\}")
_ZEROS_BEFORE_NON_DIGIT = re.compile(r"(\d+)\.0*([^\d])")
_ZEROS_AT_END = re.compile(r"(\d+)\.0*$")
_SQRT_BARE_ARGUMENT = re.compile(r"\\sqrt(\w+)")


def strip_string(answer: str) -> str:
    """The harness's normalized form of `answer` (see the module docstring); '' stays ''."""
    s = str(answer).strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "")
    s = _ARRAY_BEGIN.sub(r"\\begin{pmatrix}", s).replace("\\end{array}", "\\end{pmatrix}").replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    s = _drop_trailing_text(s)
    s = _drop_unit_words(s)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = _number_words_to_digits(s)
    s = _TEXT.sub(r"\1", s)
    for prefix in _VARIABLE_PREFIXES:
        s = s.replace(prefix, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = _spell_infinity(s)
    s = s.replace("and", "").replace("\\mathbf", "")
    s = _MBOX.sub("", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = _ZEROS_AT_END.sub(r"\1", _ZEROS_BEFORE_NON_DIGIT.sub(r"\1\2", s))
    if not s:
        return s
    if s.startswith("."):
        s = "0" + s
    s = _drop_short_left_side(s)
    s = _SQRT_BARE_ARGUMENT.sub(r"\\sqrt{\1}", s).replace(" ", "")
    return _slash_to_frac(_brace_frac_arguments(s))


def _drop_trailing_text(s: str) -> str:
    """Remove a final `\\text{...}` (a unit such as `\\text{ cm}`) unless nothing would be left."""
    shorter = _TRAILING_TEXT.sub("", s).strip()
    return shorter if shorter else s


def _drop_unit_words(s: str) -> str:
    """Delete standalone unit words, two passes over the list; a deletion that empties `s` is skipped."""
    for _ in range(_UNIT_PASSES):
        for pattern in _UNIT_PATTERNS:
            shorter = pattern.sub(r"\1\2", s)
            if shorter:
                s = shorter
    return s


def _number_words_to_digits(s: str) -> str:
    """`word2number`'s reading of `s` when it has one ('seven' -> '7', '012' -> '12'), else `s`."""
    try:
        return str(w2n.word_to_num(s))
    except Exception:  # word2number signals "not a number" with assorted exceptions
        return s


def _spell_infinity(s: str) -> str:
    """'infinity' -> '\\infty'; without any '\\infty', every 'inf' -> '\\infty'."""
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    return s.replace("+\\inity", "\\infty")


def _drop_short_left_side(s: str) -> str:
    """`k=5` -> `5`: exactly one '=' with at most two characters before it."""
    parts = s.split("=")
    return parts[1] if len(parts) == 2 and len(parts[0]) <= 2 else s


def _brace_frac_arguments(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{7}` -> `\\frac{1}{7}`; `s` unchanged if a `\\frac` has < 2 characters after it."""
    first, *rest = s.split("\\frac")
    out = first
    for piece in rest:
        if piece.startswith("{"):
            out += "\\frac" + piece
        elif len(piece) < 2:
            return s
        elif piece[1] == "{":
            out += "\\frac{" + piece[0] + "}" + piece[1:]
        else:
            out += "\\frac{" + piece[0] + "}{" + piece[1] + "}" + piece[2:]
    return out


def _slash_to_frac(s: str) -> str:
    """`a/b` -> `\\frac{a}{b}` when each side is a plainly written integer or contains 'sqrt'."""
    parts = s.split("/")
    if len(parts) != 2 or not all(_plain_integer_or_sqrt(part) for part in parts):
        return s
    return "\\frac{" + parts[0] + "}{" + parts[1] + "}"


def _plain_integer_or_sqrt(part: str) -> bool:
    """True for text containing 'sqrt', or text that is `str(int(text))` (no sign '+', spaces, or leading zeros)."""
    if "sqrt" in part:
        return True
    try:
        return str(int(part)) == part
    except ValueError:
        return False
