"""Completion text and stop strings, with vLLM's semantics.

Text: a completion's text is decoded in the context of the prompt's last `CONTEXT_TOKENS` tokens
(what the prompt's text is followed by), special tokens skipped, so a SentencePiece word piece
keeps its leading space as in vLLM's incremental detokenizer.

Stop strings: with text_k the text of the first k generated tokens, a completion stops at the
smallest k for which text_k contains one of the stop strings; its text is text_k cut just before
the first of them (in the given order) that it contains, and its token ids are the first k tokens
(the token that completed the stop string included, as vLLM reports them).

On device, a row's loop exits for a host check only when the row produced a "trigger" token: one
whose text can hold the last character of a stop string (that character itself, or a byte of an
incomplete UTF-8 character when the character is not ASCII). Every occurrence of a stop string is
completed by such a token; the host also checks each row when it ends, so the returned text never
depends on the trigger table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONTEXT_TOKENS = 4
_REPLACEMENT = "\ufffd"


def completion_text(tokenizer, prompt_ids: Sequence[int], token_ids: Sequence[int]) -> str:
    """The text of `token_ids` as a continuation of `prompt_ids` (see the module docstring)."""
    context = list(prompt_ids[-CONTEXT_TOKENS:])
    head = tokenizer.decode(context, skip_special_tokens=True)
    full = tokenizer.decode(context + list(token_ids), skip_special_tokens=True)
    shared = 0
    for a, b in zip(head, full):
        if a != b:
            break
        shared += 1
    return full[shared:]


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where `text` is cut: the position of the first stop string (in the order given) it contains, or None."""
    for stop in stops:
        position = text.find(stop)
        if position >= 0:
            return position
    return None


def find_stop(tokenizer, prompt_ids: Sequence[int], token_ids: Sequence[int], stops: Sequence[str],
              checked: int = 0) -> tuple[int, str] | None:
    """(k, text) where the completion `token_ids` stops, or None if no stop string occurs in its text.

    `checked`: a count of leading tokens already known to hold no stop string (the search starts
    after them). k is found by bisection: once a stop string occurs in text_k it occurs in every longer text.
    """
    if not stops or first_stop(completion_text(tokenizer, prompt_ids, token_ids), stops) is None:
        return None
    low, high = checked, len(token_ids)  # text_low has no stop string, text_high has one
    while high - low > 1:
        middle = (low + high) // 2
        if first_stop(completion_text(tokenizer, prompt_ids, token_ids[:middle]), stops) is None:
            low = middle
        else:
            high = middle
    text = completion_text(tokenizer, prompt_ids, token_ids[:high])
    return high, text[: first_stop(text, stops)]


def trigger_tokens(tokenizer, stops: Sequence[str], vocab_size: int) -> np.ndarray:
    """bool `[vocab_size]`: the tokens whose text can complete a stop string (see the module docstring).

    A token's text is taken both alone and after a plain letter (SentencePiece drops a word piece's
    leading space at the start of a text); ids beyond the tokenizer's vocabulary decode to nothing.
    """
    triggers = np.zeros(vocab_size, bool)
    last_chars = {stop[-1] for stop in stops}
    if not last_chars:
        return triggers
    if any(ord(c) > 127 for c in last_chars):
        last_chars.add(_REPLACEMENT)
    known = min(len(tokenizer), vocab_size)
    anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
    alone = tokenizer.batch_decode([[i] for i in range(known)], skip_special_tokens=True)
    after = tokenizer.batch_decode([anchor + [i] for i in range(known)], skip_special_tokens=True)
    for i, (a, b) in enumerate(zip(alone, after)):
        triggers[i] = any(c in a or c in b for c in last_chars)
    return triggers
