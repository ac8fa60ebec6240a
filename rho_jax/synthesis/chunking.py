"""Cut a document into chunks of at most N tokens at paragraph, then sentence, then word boundaries.

Units, coarsest first: paragraphs (separated by blank lines), sentences (ending in `.`, `!`, `?`,
`…`, or the full-width `。！？`, followed by whitespace), words (whitespace-separated), and, for a
word longer than N tokens alone, the longest character prefixes that fit. Chunks are built
greedily: a unit joins the current chunk when the joined text still encodes to <= N tokens
(counted without special tokens, on the actual joined text), else it starts a new chunk; a unit
that alone exceeds N tokens is cut into the next finer units first. Units are joined with the
separator they had ("\\n\\n" between paragraphs, " " otherwise), so the concatenation of the chunks
holds every non-space character of the document in order. Nothing depends on the script: Hangul,
Han or Cyrillic text splits the same way as Latin text (Korean sentences end in `.` as well).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PARAGRAPH = re.compile(r"\n[ \t]*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+")
_WHITESPACE = re.compile(r"\s+")


def token_counter(tokenizer) -> Callable[[str], int]:
    """`text -> number of tokens` of `tokenizer`, special tokens not counted."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _words(sentence: str) -> list[str]:
    return [w for w in _WHITESPACE.split(sentence) if w]


def _characters(word: str, count: Callable[[str], int], max_tokens: int) -> list[str]:
    """`word` cut into the longest prefixes of <= max_tokens tokens (at least one character each)."""
    pieces = []
    while word:
        low, high = 1, len(word)  # the longest prefix that fits lies in [low, high]
        while low < high:
            middle = (low + high + 1) // 2
            if count(word[:middle]) <= max_tokens:
                low = middle
            else:
                high = middle - 1
        pieces.append(word[:low])
        word = word[low:]
    return pieces


def _pack(units: list[str], separator: str, count: Callable[[str], int], max_tokens: int,
          finer: Callable[[str], list[str]]) -> list[str]:
    """Greedy chunks of `units` joined by `separator`; a unit over the limit is replaced by `finer(unit)` chunks."""
    chunks: list[str] = []
    current = ""
    for unit in units:
        if count(unit) > max_tokens:
            if current:
                chunks.append(current)
                current = ""
            chunks.extend(finer(unit))
            continue
        joined = f"{current}{separator}{unit}" if current else unit
        if count(joined) <= max_tokens:
            current = joined
        else:
            chunks.append(current)
            current = unit
    if current:
        chunks.append(current)
    return chunks


def chunk_text(text: str, count: Callable[[str], int], max_tokens: int) -> list[str]:
    """`text` cut into chunks of at most `max_tokens` tokens by `count` (see the module docstring).

    Raises ValueError when max_tokens < 1; an all-whitespace text gives no chunks.
    """
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}.")

    def by_characters(word: str) -> list[str]:
        return _characters(word, count, max_tokens)

    def by_words(sentence: str) -> list[str]:
        return _pack(_words(sentence), " ", count, max_tokens, by_characters)

    def by_sentences(paragraph: str) -> list[str]:
        return _pack(_sentences(paragraph), " ", count, max_tokens, by_words)

    paragraphs = [p.strip() for p in _PARAGRAPH.split(text) if p.strip()]
    return _pack(paragraphs, "\n\n", count, max_tokens, by_sentences)
