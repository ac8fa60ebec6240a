"""Prompt-length buckets: prompts are padded to a few lengths so a run compiles a few prefill programs.

The default ladder is 32, 48, 64, 96, 128, 192, ... (powers of two and 1.5x powers of two from 32),
so padding wastes less than a third of a prefill while any range of lengths up to L needs at most
2 log2(L / 32) + 1 programs (8-shot GSM8K prompts, 750-1000 tokens: two, 768 and 1024).
"""

from __future__ import annotations

from collections.abc import Sequence

SMALLEST_DEFAULT_BUCKET = 32
CACHE_ALIGNMENT = 128  # the cache length is a multiple of this, so similar runs share a decode program


def default_bucket(length: int) -> int:
    """The smallest length of the default ladder that is >= `length`."""
    bucket = SMALLEST_DEFAULT_BUCKET
    while True:
        if length <= bucket:
            return bucket
        if length <= bucket * 3 // 2:
            return bucket * 3 // 2
        bucket *= 2


def validate_buckets(buckets: Sequence[int] | None) -> tuple[int, ...] | None:
    """User buckets sorted ascending (None: the default ladder); each must be a positive integer."""
    if buckets is None:
        return None
    if not buckets or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets):
        raise ValueError(f"prompt_buckets must be a non-empty list of positive integers, got {buckets!r}.")
    return tuple(sorted(set(buckets)))


def bucket_length(length: int, buckets: tuple[int, ...] | None) -> int:
    """The padded length of a prompt of `length` tokens: the smallest bucket that holds it."""
    if buckets is None:
        return default_bucket(length)
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"a prompt of {length} tokens is longer than the largest prompt bucket ({buckets[-1]}); "
                     "add a larger bucket to prompt_buckets.")


def cache_length(longest_bucket: int, longest_prompt: int, max_new_tokens: int, max_length: int) -> int:
    """Cache positions a run needs: room for the longest padded prompt and for any prompt plus its
    new tokens (at most `max_length` in all), rounded up to a multiple of `CACHE_ALIGNMENT`."""
    needed = max(longest_bucket, min(longest_prompt + max_new_tokens, max_length))
    return -(-needed // CACHE_ALIGNMENT) * CACHE_ALIGNMENT
