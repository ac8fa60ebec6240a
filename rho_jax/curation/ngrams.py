"""Normalized words and hashed word n-grams: the unit of n-gram decontamination.

Normalization (the same for evaluation items and training documents; `normalize`, `words`):
  1. Separators become spaces: every character whose Unicode general category is Z* (spaces), P*
     (punctuation), S* (symbols: $ + < = > ^ ` | ~ ...) or Cc (controls, which include tab and newline).
     Whitespace is thereby collapsed: a word is a maximal run of other characters.
  2. Format characters (Cf: soft hyphen, zero-width space and joiners, byte order mark) are deleted.
  3. Canonical caseless form, recomposed: NFC(casefold(NFD(text))) (Unicode's canonical caseless match, D145,
     returned in NFC). Case differences and precomposed-vs-combining spellings vanish; Hangul syllables and
     every other script keep their letters (nothing is dropped, unlike datatrove's NFD + strip marks).
  4. With `fold_digits`, every decimal digit (category Nd, any script) becomes "0": "12 apples" and
     "75 apples" then match.
Scripts written without spaces between words (Chinese, Japanese, Thai) give one word per run of text.

Hashes (`ngram_hashes`, `batch_ngram_hashes`), all arithmetic modulo 2**64:
    word   w with UTF-8 bytes c_0..c_{L-1}:  h(w) = mix64(L + sum_k (c_k + 1) * R**k)
    n-gram of words w_j..w_{j+n-1}:          g_j  = sum_{i<n} h(w_{j+i}) * P**(n-1-i)
with R = 0x100000001B3, P = 0x9E3779B97F4A7C15 and mix64 the splitmix64 finalizer (x ^= x >> 30;
x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31). Word hashes come from
prefix sums over the bytes of a whole batch of documents, so there is no Python work per word; values do
not depend on the batch, the machine or the process. `NGRAM_SCHEME` names this normalization + hash: an
index records it, and a change to either must change it.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["BatchNGrams", "DecontaminationError", "NGRAM_SCHEME", "NGramSettings", "batch_ngram_hashes", "ngram_hashes",
           "normalize", "word_hashes", "word_spans", "words"]

NGRAM_SCHEME = "rho_jax-ngrams-1"

_R = 0x100000001B3
_P = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SEGMENT = 1 << 18  # bytes hashed at once: bounds the power tables (2 x 8 bytes per byte of segment)
_SPACE = 0x20


class DecontaminationError(ValueError):
    """Bad input to decontamination (settings, index, corpus); the message says what was wrong and what is allowed."""


@dataclass(frozen=True)
class NGramSettings:
    """Word n-gram length and normalization option; an index and the corpus it is applied to must agree."""

    n: int = 13
    fold_digits: bool = False

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise DecontaminationError(f"n (words per n-gram) must be a positive integer, got {self.n!r}")
        if not isinstance(self.fold_digits, bool):
            raise DecontaminationError(f"fold_digits must be true or false, got {self.fold_digits!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "scheme": NGRAM_SCHEME}


_WORD, _SEPARATOR, _FORMAT = 0, 1, 2


def _kind(char: str) -> int:
    category = unicodedata.category(char)
    if category[0] in "ZPS" or category == "Cc":
        return _SEPARATOR
    return _FORMAT if category == "Cf" else _WORD


@functools.cache
def _kinds() -> np.ndarray:
    """uint8 per code point: _WORD, _SEPARATOR or _FORMAT (`_kind` of every code point; built once per process)."""
    categories = "".join(map(unicodedata.category, map(chr, range(sys.maxunicode + 1))))
    letters = np.frombuffer(categories.encode("ascii"), np.uint8).reshape(-1, 2)
    major, minor = letters[:, 0], letters[:, 1]
    separator = np.isin(major, np.frombuffer(b"ZPS", np.uint8)) | ((major == ord("C")) & (minor == ord("c")))
    format_char = (major == ord("C")) & (minor == ord("f"))
    return np.where(separator, _SEPARATOR, np.where(format_char, _FORMAT, _WORD)).astype(np.uint8)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def _ascii_table(fold_digits: bool) -> dict[int, int]:
    table = {code: _SPACE if _kind(chr(code)) == _SEPARATOR else ord(chr(code).lower()) for code in range(128)}
    if fold_digits:
        table.update({code: ord("0") for code in range(ord("0"), ord("9") + 1)})
    return table


_ASCII = {fold: _ascii_table(fold) for fold in (False, True)}
_DIGIT = re.compile(r"\d")


def normalize(text: str, fold_digits: bool = False) -> str:
    """`text` normalized (module docstring, steps 1-4), its words separated by single spaces."""
    return " ".join(words(text, fold_digits))


def _normalized(text: str, fold_digits: bool) -> str:
    """Steps 1-4 without collapsing: separators are spaces, words are the runs of non-spaces. ASCII text is
    one `str.translate`; other text goes through a code-point table (numpy), then the Unicode normalizations."""
    if text.isascii():
        return text.translate(_ASCII[fold_digits])
    codes = _code_points(text)
    kinds = _kinds()[codes]
    codes = np.where(kinds == _SEPARATOR, np.uint32(_SPACE), codes)[kinds != _FORMAT]
    text = codes.tobytes().decode("utf-32-le", "surrogatepass")
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())
    return _DIGIT.sub("0", text) if fold_digits else text


def words(text: str, fold_digits: bool = False) -> list[str]:
    """The normalized words of `text`."""
    return _normalized(text, fold_digits).split()


def _runs(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True in a bool array."""
    edges = np.diff(inside.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def word_spans(text: str) -> np.ndarray:
    """[start, end) character span in `text` of each word of `words(text)`, as an int64 array [words, 2].

    A word is a run of non-separator characters of the original text that holds a character other than a
    format character: normalization never crosses a separator (a space blocks composition and reordering,
    case folding is context free) and never turns a word character into a separator or into nothing, so
    these runs and the normalized words correspond one to one."""
    if text.isascii():
        spaces = np.frombuffer(text.translate(_ASCII[False]).encode("ascii"), np.uint8) == _SPACE
        kinds = np.where(spaces, np.uint8(_SEPARATOR), np.uint8(_WORD))
    else:
        kinds = _kinds()[_code_points(text)]
    starts, ends = _runs(kinds != _SEPARATOR)
    if len(starts) and (kinds == _FORMAT).any():
        letters = np.add.reduceat((kinds == _WORD).astype(np.int64), starts)
        starts, ends = starts[letters > 0], ends[letters > 0]
    return np.stack([starts, ends], axis=1)


@functools.lru_cache(maxsize=2)
def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """(R**k, R**-k) for k < length, modulo 2**64 (R is odd, hence invertible)."""
    powers = np.full(length, _R, np.uint64)
    inverse = np.full(length, pow(_R, -1, 1 << 64), np.uint64)
    powers[0] = inverse[0] = 1
    return np.cumprod(powers, dtype=np.uint64), np.cumprod(inverse, dtype=np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


_BYTE_VALUE = np.arange(1, 257, dtype=np.uint64)  # c -> c + 1; a space contributes nothing
_BYTE_VALUE[_SPACE] = 0


def _segment_words(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start byte, end byte, hash) of every word of `data`, bytes that do not begin or end inside a word."""
    powers, inverse = _powers(max(_SEGMENT, 1 << (len(data) - 1).bit_length()))
    values = _BYTE_VALUE[data]
    values *= powers[: len(data)]
    prefix = np.zeros(len(data) + 1, np.uint64)
    np.cumsum(values, out=prefix[1:])
    starts, ends = _runs(data != _SPACE)
    sums = (prefix[ends] - prefix[starts]) * inverse[starts]
    sums += (ends - starts).astype(np.uint64)
    return starts, ends, _mix64(sums)


def word_hashes(normalized: bytes) -> tuple[np.ndarray, np.ndarray]:
    """([start, end) byte span [words, 2], uint64 hash) of every word (run of non-space bytes) of UTF-8
    `normalized` text, in order. The bytes are hashed in segments of about 256 KiB cut at spaces, which
    bounds the power tables."""
    data = np.frombuffer(normalized, np.uint8)
    spans, hashes, begin = [], [], 0
    while begin < len(data):
        end = begin + _SEGMENT
        if end < len(data):
            cut = normalized.rfind(b" ", begin, end)
            end = cut if cut > begin else normalized.find(b" ", end)
            end = len(data) if end < 0 else end
        starts, ends, segment_hashes = _segment_words(data[begin:end])
        spans.append(np.stack([starts, ends], axis=1) + begin)
        hashes.append(segment_hashes)
        begin = end
    if not hashes:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.uint64)
    return np.concatenate(spans), np.concatenate(hashes)


def _combine(hashes: np.ndarray, n: int) -> np.ndarray:
    """g_j = sum_i hashes[j + i] * P**(n-1-i) for every j that starts a full n-gram (Horner's rule)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    combined = hashes[:count].copy()
    for i in range(1, n):
        combined *= _P
        combined += hashes[i: i + count]
    return combined


def ngram_hashes(text: str, settings: NGramSettings) -> np.ndarray:
    """Hashes of the word n-grams of `text`, in order: element j is the n-gram that starts at word j."""
    _, hashes = word_hashes(_normalized(text, settings.fold_digits).encode("utf-8", "surrogatepass"))
    return _combine(hashes, settings.n)


@dataclass(frozen=True)
class BatchNGrams:
    """The n-grams of a batch of texts: n-gram k has hash `hashes[k]` and starts at word `position[k]` of text
    `text[k]` (no n-gram spans two texts). Text t has `word_counts[t]` words, the first being word
    `first_word[t]` of the batch; `word_bytes[w]` is the [start, end) byte span of batch word w in its text's
    normalized UTF-8 (for ASCII text, its character span in the original)."""

    hashes: np.ndarray
    text: np.ndarray
    position: np.ndarray
    word_counts: np.ndarray
    first_word: np.ndarray
    word_bytes: np.ndarray


def batch_ngram_hashes(texts: Sequence[str], settings: NGramSettings) -> BatchNGrams:
    """`ngram_hashes` of many texts at once, from one pass over their concatenated normalized bytes."""
    encoded = [_normalized(text, settings.fold_digits).encode("utf-8", "surrogatepass") for text in texts]
    text_starts = np.cumsum([0] + [len(data) + 1 for data in encoded[:-1]])
    spans, hashes = word_hashes(b" ".join(encoded))
    text_of_word = np.searchsorted(text_starts, spans[:, 0], side="right") - 1
    word_counts = np.bincount(text_of_word, minlength=len(encoded))
    combined = _combine(hashes, settings.n)
    first = np.arange(len(combined))
    keep = np.flatnonzero(text_of_word[first] == text_of_word[first + settings.n - 1])
    text = text_of_word[keep]
    first_word = np.concatenate([[0], np.cumsum(word_counts)[:-1]]).astype(np.int64)
    return BatchNGrams(combined[keep], text, keep - first_word[text], word_counts, first_word,
                       spans - text_starts[text_of_word][:, None])
