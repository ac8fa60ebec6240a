"""Validation of generated question/answer pairs: every completion gets exactly one verdict.

The checks, in order; a completion is rejected with the first reason that applies:
    truncated            finish_reason "length": the completion hit max_new_tokens or the context
    missing answer marker  the parser found no answer marker
    empty question or answer  either is empty after stripping whitespace
    question copies text  the question's word n-gram overlap with the source chunk > threshold
    answer perplexity     the answer's perplexity under a scoring model > a limit (optional;
                          `rho_jax.synthesis.perplexity`)
    duplicate            the normalized question equals that of an earlier accepted pair of the
                          same shard (samples of one chunk often repeat themselves)
Otherwise the pair is "valid".

Overlap: words are the maximal runs of Unicode letters/digits of the NFC-normalized, lower-cased
text (so Hangul words are words); with Q the set of the question's word n-grams and S the
chunk's, overlap = |Q & S| / |Q| (0 when the question has fewer than n words). A question
pasted from the text scores 1.
"""

from __future__ import annotations

import re
import unicodedata

from rho_jax.synthesis.parsing import Parsed

VALID = "valid"
TRUNCATED = "truncated"
MISSING_ANSWER = "missing answer marker"
EMPTY = "empty question or answer"
COPIES_TEXT = "question copies text"
PERPLEXITY = "answer perplexity"
DUPLICATE = "duplicate"
REASONS = (TRUNCATED, MISSING_ANSWER, EMPTY, COPIES_TEXT, PERPLEXITY, DUPLICATE)

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def overlap(question: str, source: str, n: int) -> float:
    """The share of the question's word n-grams that occur in `source` (see the module docstring)."""
    grams = ngrams(words(question), n)
    if not grams:
        return 0.0
    return len(grams & ngrams(words(source), n)) / len(grams)


def normalized(text: str) -> str:
    """`text` as compared for duplicates: its words joined by single spaces."""
    return " ".join(words(text))


def first_check(parsed: Parsed, finish_reason: str, chunk: str, ngram: int, max_overlap: float) -> str | None:
    """The reason from the first four checks that rejects this completion, or None."""
    if finish_reason == "length":
        return TRUNCATED
    if parsed.answer is None:
        return MISSING_ANSWER
    if not parsed.question or not parsed.answer:
        return EMPTY
    if overlap(parsed.question, chunk, ngram) > max_overlap:
        return COPIES_TEXT
    return None


class Deduplicator:
    """Says whether a question repeats one seen before (by `normalized` text)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def is_duplicate(self, question: str) -> bool:
        key = normalized(question)
        if key in self.seen:
            return True
        self.seen.add(key)
        return False
