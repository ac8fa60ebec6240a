"""Sampling parameters and the choice of the next token from logits (greedy, temperature, top-k, top-p).

For float32 logits `l` of one row, with temperature T > 0:
    1. l / T
    2. top-k (k > 0): tokens whose tempered logit is below the k-th largest are removed (ties kept)
    3. top-p (p < 1): on the softmax of what is left, sorted by probability (descending), token i is
       kept iff the mass of the tokens before it is < p: the smallest prefix whose mass reaches p
    4. one draw from the softmax of the kept logits with the row's key.
T = 0 is greedy: the arg-max (the first index among ties), as `transformers` `do_sample=False`.
The order and the cut-offs are those of `transformers`' and vLLM's logits warpers.

Randomness: the key of the token a row samples after `n` generated tokens is
`fold_in(fold_in(key(seed), row_id), n)`, so a prompt's sample depends on the seed, the prompt's
index and its own history only, not on the batch it shares or the devices it runs on.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample (vLLM's meanings).

    max_new_tokens: generated tokens at most (fewer when the model's context ends first).
    temperature: 0 means greedy decoding; otherwise the softmax temperature.
    top_k: keep the k most likely tokens (0: off). top_p: nucleus mass (1: off).
    stop: stop strings; a completion ends at the first token whose text completes one of them,
      and its text ends just BEFORE that stop string (finish_reason "stop").
    seed: the sampling seed (see the module docstring).
    ignore_eos: keep generating after EOS tokens (benchmarks: every row makes `max_new_tokens`).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}.")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}.")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {self.top_p!r}.")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}.")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}.")

    @property
    def rule(self) -> SamplingRule:
        """The part that decides the compiled sampling program."""
        if self.temperature == 0:
            return SamplingRule()
        return SamplingRule(float(self.temperature), self.top_k, float(self.top_p))


@dataclasses.dataclass(frozen=True)
class SamplingRule:
    """Temperature (0 = greedy), top-k (0 = off) and top-p (1 = off): a static argument of the jitted programs."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def filtered_logits(logits: jax.Array, rule: SamplingRule) -> jax.Array:
    """float32 logits `[B, V]` after steps 1-3 (removed tokens at -inf); requires temperature > 0."""
    logits = logits.astype(jnp.float32) / rule.temperature
    if rule.top_k:
        kth = jax.lax.top_k(logits, min(rule.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if rule.top_p < 1:
        descending = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = mass_before < rule.top_p  # a prefix of the sorted tokens (the first always)
        threshold = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def row_keys(seed: jax.Array, row_ids: jax.Array, generated: jax.Array) -> jax.Array:
    """Per-row keys `fold_in(fold_in(key(seed), row_id), generated)`."""
    base = jax.random.key(seed)
    return jax.vmap(lambda row, n: jax.random.fold_in(jax.random.fold_in(base, row), n))(row_ids, generated)


def sample_tokens(logits: jax.Array, keys: jax.Array, rule: SamplingRule) -> jax.Array:
    """The next token `[B]` (int32) of each row from float32 logits `[B, V]` and per-row keys `[B]`."""
    if rule.temperature == 0:  # argmax as max + first index of it: two plain reductions, faster on CPUs
        best = jnp.max(logits, axis=-1, keepdims=True)
        vocab = logits.shape[-1]
        first = jnp.min(jnp.where(logits == best, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
        return jnp.minimum(first, vocab - 1)  # (an all-NaN row has no maximum)
    filtered = filtered_logits(logits, rule)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
