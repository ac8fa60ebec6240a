"""Answer extraction from a model's completion, as the paper's math evaluation harness does it.

Free-form answers (`kind` "number" or "latex"), first rule that applies:

1. the text between the first `final answer is $` and the next `$. I hope` (Minerva's format);
2. else the last `boxed` group (`extract_boxed`);
3. else the text after the last `he answer is`;
4. else the text after the last `final answer is`;
5. else the last number (`-?\\d*\\.?\\d+`, after deleting every comma), or '' if there is none.

Then: line breaks with the whitespace after them are removed, one leading ':' and one trailing '.'
and '/' are dropped, and `strip_string` normalizes the result twice (the harness normalizes inside
its extraction and again when it records the prediction; the normalization is not idempotent).

Multiple choice (`kind` "choice"): in the text before the first `Problem:`, with `choice is` read
as `answer is`, the first `answer is X` or `answer is (X)` (case-insensitive, X in a-e) gives the
upper-case letter; no match gives `NO_CHOICE`.

The harness's data name changes nothing else: GSM8K, SVAMP, ASDiv, MAWPS, TabMWP and MATH
completions all go through the same free-form rules, so "number" and "latex" behave identically
(the kind only records what the task's answers look like); MMLU-STEM, SAT and MathQA use "choice".
"""

from __future__ import annotations

import re

from rho_jax.evaluation.normalization import strip_string

ANSWER_KINDS = ("number", "latex", "choice")
NO_CHOICE = "placeholder"  # the harness's prediction when no choice letter is found; never equals a letter

_MINERVA_START = "final answer is $"
_MINERVA_END = "$. I hope"
_NUMBER = re.compile(r"-?\d*\.?\d+")
_LINE_BREAK = re.compile(r"\n\s*")
_CHOICE = re.compile(r"answer is \(?([abcde])\)?")

__all__ = ["ANSWER_KINDS", "NO_CHOICE", "extract_answer", "extract_boxed", "strip_string"]


def extract_answer(completion: str, kind: str) -> str:
    """The prediction the harness records for `completion` (see the module docstring for the rules)."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(ANSWER_KINDS)}")
    if kind == "choice":
        return _choice_letter(completion)
    return strip_string(strip_string(_tidy(_free_form_answer(completion))))


def extract_boxed(text: str) -> str | None:
    """Contents of the last `boxed` in `text` (None if there is none), read the harness's way.

    After the last occurrence of the letters `boxed`: if a `{` follows at once, the text up to its
    matching `}` (to the end of `text` if it never closes); otherwise the text up to the next `$`,
    stripped. Only `boxed` counts (`\\fbox` does not: the harness ignores it).
    """
    if "boxed" not in text:
        return None
    after = text.rsplit("boxed", 1)[1]
    if not after.startswith("{"):
        return after.split("$", 1)[0].strip()
    depth = 0
    for i, char in enumerate(after):
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return after[1:i]
    return after[1:]


def _free_form_answer(text: str) -> str:
    """The raw answer text by rules 1-5 of the module docstring."""
    if _MINERVA_START in text and _MINERVA_END in text:
        return text.split(_MINERVA_START, 1)[1].split(_MINERVA_END, 1)[0].strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    for marker in ("he answer is", "final answer is"):
        if marker in text:
            return text.rsplit(marker, 1)[1].strip()
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else ""


def _tidy(raw: str) -> str:
    """Line breaks (with the whitespace after them) removed; one leading ':', one trailing '.' and '/' dropped."""
    raw = _LINE_BREAK.sub("", raw)
    raw = raw.removeprefix(":")
    raw = raw.removesuffix(".")
    return raw.removesuffix("/")


def _choice_letter(text: str) -> str:
    """The multiple-choice letter A-E named after the first `answer is`, or `NO_CHOICE`."""
    text = text.split("Problem:", 1)[0].replace("choice is", "answer is")
    match = _CHOICE.search(text.lower())
    return match.group(1).upper() if match else NO_CHOICE
