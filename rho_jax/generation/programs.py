"""The two jitted programs of generation over a fixed set of B decode slots, and their state.

`prefill_into_slots` prefills a group of right-padded prompts (`rho_jax.models.kv_cache.prefill`),
samples each one's first token and installs it in free slots (cache rows, position, counters).
`decode_chunk` runs up to `steps` decode steps for all slots in ONE `lax.while_loop`: each step
feeds every slot's last token (`decode_step`), samples the next one and appends it to the slot's
output; a slot is done after an EOS token or its token budget. The loop ends early when every slot
is done, when a slot produced a stop-string trigger token (`rho_jax.generation.stops`), or, with
`exit_on_finish`, when a slot finished (so the host can refill it). Done slots still take part in
the batched matmuls but neither advance nor write output.

Sharding: on a mesh, slots (the batch axis of every state array) are split over (`data`, `fsdp`)
and the cache's kv heads over `tensor`; activations follow `rho_jax.sharding`'s batch rule.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rho_jax.generation.sampling import SamplingRule, row_keys, sample_tokens
from rho_jax.models.config import ModelConfig
from rho_jax.models.kv_cache import KVCache, batch_shards, cache_sharding, decode_step, init_cache, prefill
from rho_jax.sharding import BATCH_AXES


class SlotState(NamedTuple):
    """Device state of B decode slots (one prompt each); `S` cache positions, `M` = max new tokens.

    tokens [B]: the last sampled token, fed at the next step; positions [B]: its position (= cache
    index) = prompt length + generated - 1; generated [B]: tokens sampled so far; budget [B]: the
    most it may sample; done [B]; row_ids [B]: the prompt index (for the sampling keys);
    output [B, M]: the sampled tokens, the first `generated` of each row valid.
    """

    cache: KVCache
    tokens: jax.Array
    positions: jax.Array
    generated: jax.Array
    budget: jax.Array
    done: jax.Array
    row_ids: jax.Array
    output: jax.Array


def state_shardings(mesh: Mesh, cfg: ModelConfig, slots: int, cache_length: int) -> SlotState:
    """Shardings of a `SlotState`: slots over (`data`, `fsdp`) where they divide, cache as `cache_sharding`."""
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES if slots % batch_shards(mesh) == 0 else None))
    cache = cache_sharding(mesh, cfg, slots, cache_length)
    return SlotState(KVCache(cache, cache), rows, rows, rows, rows, rows, rows, rows)


def empty_state(cfg: ModelConfig, dtype: jnp.dtype, slots: int, cache_length: int, max_new_tokens: int) -> SlotState:
    """Every slot free (done, nothing generated)."""
    zeros = jnp.zeros((slots,), jnp.int32)
    return SlotState(init_cache(cfg, slots, cache_length, dtype), zeros, zeros, zeros, zeros,
                     jnp.ones((slots,), bool), zeros, jnp.zeros((slots, max_new_tokens), jnp.int32))


class Programs:
    """The jitted programs of one model on one mesh; `traces` counts how often each was traced
    (= compiled), keyed by its kind and shapes: ("prefill", rows, prompt width) and ("decode",
    slots, max new tokens, cache length, attention length)."""

    def __init__(self, graphdef: nnx.GraphDef, cfg: ModelConfig, dtype: jnp.dtype, mesh: Mesh):
        self.graphdef, self.config, self.dtype, self.mesh = graphdef, cfg, dtype, mesh
        self.traces: collections.Counter = collections.Counter()
        self._jitted: dict[tuple, Callable] = {}

    def empty_state(self, slots: int, cache_length: int, max_new_tokens: int) -> SlotState:
        """A `SlotState` with every slot free, placed in `state_shardings`."""
        key = ("empty", slots, cache_length, max_new_tokens)
        if key not in self._jitted:
            make = functools.partial(empty_state, self.config, self.dtype, slots, cache_length, max_new_tokens)
            self._jitted[key] = jax.jit(make, out_shardings=state_shardings(self.mesh, self.config, slots, cache_length))
        return self._jitted[key]()

    def _jit(self, name: str, fn: Callable, shardings: SlotState, **static) -> Callable:
        """`fn` jitted with its state argument (position 1) donated and returned in `shardings`."""
        key = (name, shardings, tuple(sorted(static.items())))
        if key not in self._jitted:
            self._jitted[key] = jax.jit(lambda *args: fn(*args, **static), donate_argnums=1,
                                        out_shardings=(shardings, None) if name == "decode" else shardings)
        return self._jitted[key]

    def prefill_into_slots(self, params: nnx.State, state: SlotState, shardings: SlotState, prompt_tokens: jax.Array,
                           lengths: jax.Array, slots: jax.Array, row_ids: jax.Array, budgets: jax.Array,
                           seed: jax.Array, eos_ids: jax.Array, rule: SamplingRule) -> SlotState:
        """Prefill prompts `[G, P]` (right-padded, `lengths [G]`) into slots `slots [G]` (an index >= B
        leaves that row out); each gets its first token sampled and `budgets` tokens at most."""
        run = self._jit("prefill", self._prefill, shardings, rule=rule)
        return run(params, state, prompt_tokens, lengths, slots, row_ids, budgets, seed, eos_ids)

    def decode_chunk(self, params: nnx.State, state: SlotState, shardings: SlotState, free: jax.Array, seed: jax.Array,
                     eos_ids: jax.Array, triggers: jax.Array, exit_on_finish: jax.Array, rule: SamplingRule,
                     steps: int, attention_length: int) -> tuple[SlotState, jax.Array]:
        """Up to `steps` decode steps (see the module docstring); `free [B]` marks slots the host
        released; attention reads the first `attention_length` cache positions, which must hold
        every position the chunk reaches. Returns the state and the number of steps run."""
        run = self._jit("decode", self._decode, shardings, rule=rule, steps=steps, attention_length=attention_length)
        return run(params, state, free, seed, eos_ids, triggers, exit_on_finish)

    def _prefill(self, params, state: SlotState, prompt_tokens, lengths, slots, row_ids, budgets, seed, eos_ids, *,
                 rule: SamplingRule) -> SlotState:
        self.traces["prefill", *prompt_tokens.shape] += 1
        with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
            model = nnx.merge(self.graphdef, params)
            logits, cache = prefill(model, prompt_tokens, lengths)
            first = sample_tokens(logits, row_keys(seed, row_ids, jnp.zeros_like(row_ids)), rule)
            width = prompt_tokens.shape[1]
            k = state.cache.k.at[:, slots, :, :width].set(cache.k, mode="drop")
            v = state.cache.v.at[:, slots, :, :width].set(cache.v, mode="drop")
            output = jnp.zeros((len(slots), state.output.shape[1]), jnp.int32).at[:, 0].set(first)
            put = lambda array, values: array.at[slots].set(values, mode="drop")
            return SlotState(
                KVCache(k, v), put(state.tokens, first), put(state.positions, lengths), put(state.generated, 1),
                put(state.budget, budgets), put(state.done, jnp.isin(first, eos_ids) | (budgets <= 1)),
                put(state.row_ids, row_ids), put(state.output, output))

    def _decode(self, params, state: SlotState, free, seed, eos_ids, triggers, exit_on_finish, *,
                rule: SamplingRule, steps: int, attention_length: int) -> tuple[SlotState, jax.Array]:
        self.traces["decode", *state.output.shape, state.cache.k.shape[3], attention_length] += 1
        max_new = state.output.shape[1]
        rows = jnp.arange(state.tokens.shape[0])

        def cond(carry):
            s, step, stop_now = carry
            return (step < steps) & ~jnp.all(s.done) & ~stop_now

        def body(carry):
            s, step, _ = carry
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                model = nnx.merge(self.graphdef, params)
                logits, cache = decode_step(model, s.cache, s.tokens, s.positions, attention_length)
            token = sample_tokens(logits, row_keys(seed, s.row_ids, s.generated), rule)
            active = ~s.done
            output = s.output.at[rows, jnp.where(active, s.generated, max_new)].set(token, mode="drop")
            generated = s.generated + active
            finished = active & (jnp.isin(token, eos_ids) | (generated >= s.budget))
            stop_now = jnp.any(active & triggers[token]) | (exit_on_finish & jnp.any(finished))
            new = SlotState(cache, jnp.where(active, token, s.tokens), s.positions + active, generated, s.budget,
                            s.done | finished, s.row_ids, output)
            return new, step + 1, stop_now

        state = state._replace(done=state.done | free)
        state, ran, _ = jax.lax.while_loop(cond, body, (state, jnp.int32(0), jnp.bool_(False)))
        return state, ran
