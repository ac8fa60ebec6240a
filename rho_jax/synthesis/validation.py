"""Validation of generated question/answer pairs: every completion gets exactly one verdict.

The checks, in order; a completion is rejected with the first reason that applies:
    truncated            finish_reason "length": the completion hit max_new_tokens or the context
    missing answer marker  the parser found no answer marker
    empty question or answer  either is empty after stripping whitespace
    stray marker          the question or answer still holds one of the template's marker strings
                          or the tokenizer's special tokens, or the completion holds a special
                          token id before the token that ended it (`StrayMarkers`)
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

import dataclasses
import functools
import re
import unicodedata
from collections.abc import Sequence

from rho_jax.synthesis.parsing import Parsed

VALID = "valid"
TRUNCATED = "truncated"
MISSING_ANSWER = "missing answer marker"
EMPTY = "empty question or answer"
STRAY_MARKER = "stray marker"
COPIES_TEXT = "question copies text"
PERPLEXITY = "answer perplexity"
DUPLICATE = "duplicate"
REASONS = (TRUNCATED, MISSING_ANSWER, EMPTY, STRAY_MARKER, COPIES_TEXT, PERPLEXITY, DUPLICATE)

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


def any_of(strings: Sequence[str]) -> re.Pattern:
    """A regex that matches where any of `strings` starts, built as a prefix tree: Llama-3's 256
    special tokens share `<|`, and a flat alternation of them searches about 18x slower."""
    trie: dict = {}
    for string in strings:
        node = trie
        for char in string:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(build(trie))


@dataclasses.dataclass(frozen=True)
class StrayMarkers:
    """What a finished pair must not hold: `strings` (a template's markers, a tokenizer's special
    tokens) in its question or answer, and `token_ids` (special token ids) among the completion's
    tokens before the one that ended it. The completion's text is decoded without special tokens,
    so a special token the model emitted mid-text shows only by its id; one spelled out of
    ordinary tokens shows in the text."""

    strings: tuple[str, ...] = ()
    token_ids: frozenset[int] = frozenset()

    @functools.cached_property
    def _pattern(self) -> re.Pattern | None:
        return any_of(self.strings) if self.strings else None

    def found(self, parsed: Parsed, token_ids: Sequence[int], finish_reason: str) -> bool:
        """Whether `parsed` (of a completion of `token_ids`, ended by `finish_reason`) holds a stray marker."""
        body = token_ids[:-1] if finish_reason == "eos" else token_ids
        if self.token_ids and not self.token_ids.isdisjoint(body):
            return True
        return self._pattern is not None and any(self._pattern.search(part or "") for part in (parsed.question, parsed.answer))


def first_check(parsed: Parsed, token_ids: Sequence[int], finish_reason: str, chunk: str, ngram: int,
                max_overlap: float, markers: StrayMarkers) -> str | None:
    """The reason from the first five checks that rejects this completion, or None."""
    if finish_reason == "length":
        return TRUNCATED
    if parsed.answer is None:
        return MISSING_ANSWER
    if not parsed.question or not parsed.answer:
        return EMPTY
    if markers.found(parsed, token_ids, finish_reason):
        return STRAY_MARKER
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
