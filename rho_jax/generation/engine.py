"""`Generator`: batched generation with a KV cache over B decode slots that are refilled as rows finish.

Padding: prompts are RIGHT-padded; every row keeps its own positions, counted from its first
prompt token (`rho_jax.models.kv_cache`), so rows of any lengths share a batch exactly.

Scheduling (host side): prompts are tokenized, sorted by length (longest first) and fed to B
slots. Free slots are filled by prefilling prompts in groups of G (G = the mesh's batch shards,
1 on one device; all B at once when every slot is filled together), each group padded to the
bucket of its longest prompt (`rho_jax.generation.buckets`). Then `decode_chunk` runs up to
`chunk_steps` decode steps in one jitted while-loop, attending over the first W cache positions,
W = the positions the chunk can reach rounded up on the bucket ladder. After each chunk the host
reads the slots' new tokens, ends rows whose text completed a stop string
(`rho_jax.generation.stops`), yields every finished row's `Completion` with the index of its
prompt, and refills the freed slots. Compiled programs: per prompt bucket one prefill program
per group size used (G, B), and one decode program per W used -- a handful per run whatever the
number of prompts (`Generator.programs.traces` counts them).

A row ends with finish_reason "eos" (an EOS id was sampled; it is the last of `token_ids` and not
part of the text), "stop" (a stop string; see `rho_jax.generation.stops`) or "length"
(`max_new_tokens`, or the model's context `max_length` = prompt + completion, reached first).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec
from tqdm import tqdm

from rho_jax.generation.buckets import bucket_length, cache_length, default_bucket, validate_buckets
from rho_jax.generation.programs import Programs, SlotState, state_shardings
from rho_jax.generation.sampling import SamplingParams
from rho_jax.generation.stops import completion_text, find_stop, trigger_tokens
from rho_jax.generation.transfer import fetch, place, place_params
from rho_jax.models.kv_cache import batch_shards
from rho_jax.models.llama import Llama
from rho_jax.sharding import BATCH_AXES, MeshConfig, make_mesh


@dataclasses.dataclass(frozen=True)
class Completion:
    """One prompt's result: `text` (vLLM's output text), the generated `token_ids`, why it ended
    (`finish_reason`: "stop", "eos" or "length") and the prompt's length in tokens."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


@dataclasses.dataclass
class RunStats:
    """Counters of one `generate` call: jitted calls, decode steps run, tokens generated on device,
    and how many of those were discarded because they followed a completed stop string."""

    prefill_calls: int = 0
    decode_calls: int = 0
    decode_steps: int = 0
    generated_tokens: int = 0
    discarded_tokens: int = 0


@dataclasses.dataclass
class _Row:
    """A prompt occupying a slot: its index, tokens, token budget, and how many of its generated
    tokens the host has seen (and checked for stop strings)."""

    index: int
    prompt: np.ndarray
    budget: int
    checked: int = 0

    def reach(self, steps: int) -> int:
        """Cache positions this row's attention can need within the next `steps` decode steps
        (prefill sampled its first token, so it has generated at least one)."""
        generated = max(self.checked, 1)
        return len(self.prompt) + generated - 1 + min(steps, self.budget - generated)


def single_device_mesh() -> Mesh:
    return make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])


class Generator:
    """Generate completions of prompts with `model` (see the module docstring).

    mesh: where the model and the cache live (default: the first device); its batch shards must
      divide `batch_size`. batch_size: decode slots B. eos_token_ids: ids that end a row (default:
      the tokenizer's EOS and the model config's `eos_token_id`). prompt_buckets: padded prompt
      lengths (default: `buckets.default_bucket`'s ladder). max_length: prompt + completion tokens
      at most (default: the model's `max_position_embeddings`, as vLLM's `max_model_len`).
      chunk_steps: decode steps per jitted call at most. refill: refill finished slots at once
      (False: a new group of B prompts starts only when all B slots are done; for comparison).
    """

    def __init__(self, model: Llama, tokenizer, mesh: Mesh | None = None, *, batch_size: int = 8,
                 eos_token_ids: Sequence[int] | None = None, prompt_buckets: Sequence[int] | None = None,
                 max_length: int | None = None, chunk_steps: int = 64, refill: bool = True):
        self.config = model.config
        self.tokenizer = tokenizer
        self.mesh = mesh if mesh is not None else single_device_mesh()
        self.group_size = batch_shards(self.mesh)
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % self.group_size:
            raise ValueError(f"batch_size must be a positive multiple of the mesh's batch shards (data x fsdp = "
                             f"{self.group_size}), got {batch_size!r}.")
        if not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ValueError(f"chunk_steps must be a positive integer, got {chunk_steps!r}.")
        self.batch_size = batch_size
        self.buckets = validate_buckets(prompt_buckets)
        self.max_length = max_length or self.config.max_position_embeddings
        self.chunk_steps = chunk_steps
        self.refill = refill
        self.dtype = model.options.dtype
        if eos_token_ids is None:
            config_eos = self.config.eos_token_id
            eos_token_ids = [tokenizer.eos_token_id, *(config_eos if isinstance(config_eos, tuple) else [config_eos])]
        self.eos_token_ids = sorted({int(i) for i in eos_token_ids if i is not None})
        if not self.eos_token_ids:
            raise ValueError("no EOS token id: the tokenizer and the model config name none; pass eos_token_ids.")
        graphdef, params = nnx.split(model)
        self.params = place_params(params, self.mesh)
        self.programs = Programs(graphdef, self.config, self.dtype, self.mesh)
        self.last_stats = RunStats()  # of the latest `generate` call, updated as it runs
        self._triggers: dict[tuple[str, ...], np.ndarray] = {}

    def set_params(self, params: nnx.State) -> None:
        """Generate with other parameters of the same model (e.g. a training run's current ones); the
        compiled programs are kept."""
        self.params = place_params(params, self.mesh)

    def encode(self, prompt: str | Sequence[int]) -> np.ndarray:
        """Token ids of a prompt: a string is tokenized with the tokenizer's special tokens (BOS)."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            ids = list(prompt)
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError(f"a prompt must be a non-empty string or list of token ids, got {prompt!r:.80}.")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"prompt token ids must lie in [0, {self.config.vocab_size}), got {prompt!r:.80}.")
        if len(ids) >= self.max_length:
            raise ValueError(f"a prompt of {len(ids)} tokens leaves no room to generate within max_length "
                             f"{self.max_length} (the model's context).")
        return ids.astype(np.int32)

    def triggers(self, stops: tuple[str, ...]) -> np.ndarray:
        """The stop-string trigger table of `stops` (`stops.trigger_tokens`), computed once per tuple."""
        if stops not in self._triggers:
            self._triggers[stops] = trigger_tokens(self.tokenizer, stops, self.config.vocab_size)
        return self._triggers[stops]

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]], params: SamplingParams, *,
                 progress: bool = True) -> Iterator[tuple[int, Completion]]:
        """Yield `(index into prompts, Completion)` for every prompt, in the order rows finish."""
        encoded = [self.encode(p) for p in prompts]
        if not encoded:
            return
        run = _Run(self, encoded, params)
        self.last_stats = run.stats
        with tqdm(total=len(encoded), disable=not progress, unit="prompt", desc="generate") as bar:
            for index, completion in run.completions():
                bar.update(1)
                rate = run.stats.generated_tokens / max(time.perf_counter() - run.start, 1e-9)
                bar.set_postfix_str(f"{rate:,.0f} tok/s")
                yield index, completion


class _Run:
    """One `Generator.generate` call: the slot state, the queue of prompts and the rows in slots."""

    def __init__(self, generator: Generator, prompts: list[np.ndarray], params: SamplingParams):
        g = generator
        self.g, self.prompts, self.params = g, prompts, params
        self.rule = params.rule
        longest = max(len(p) for p in prompts)
        longest_bucket = max(bucket_length(len(p), g.buckets) for p in prompts)
        self.cache_length = cache_length(longest_bucket, longest, params.max_new_tokens, g.max_length)
        self.shardings = state_shardings(g.mesh, g.config, g.batch_size, self.cache_length)
        self.state: SlotState = g.programs.empty_state(g.batch_size, self.cache_length, params.max_new_tokens)
        self.slots: list[_Row | None] = [None] * g.batch_size
        self.queue = collections.deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))
        self.seed = place(g.mesh, np.int32(params.seed))
        self.eos = place(g.mesh, np.asarray([] if params.ignore_eos else g.eos_token_ids, np.int32))
        self.trigger_table = g.triggers(params.stop) if params.stop else np.zeros(g.config.vocab_size, bool)
        self.triggers = place(g.mesh, self.trigger_table)
        self.stats = RunStats()
        self.start = time.perf_counter()

    def completions(self) -> Iterator[tuple[int, Completion]]:
        """(prompt index, Completion) of every prompt, as rows finish."""
        while self.queue or any(self.slots):
            if self.fill_free_slots() and self.params.stop:
                yield from self.collect(None)  # a first token (sampled by prefill) can complete a stop string
                if self.queue and not all(self.slots):
                    continue
            free = np.array([row is None for row in self.slots])
            exit_on_finish = place(self.g.mesh, self.g.refill and bool(self.queue))
            self.state, steps = self.g.programs.decode_chunk(
                self.g.params, self.state, self.shardings, place(self.g.mesh, free), self.seed, self.eos, self.triggers,
                exit_on_finish, self.rule, self.g.chunk_steps, self.attention_length())
            self.stats.decode_calls += 1
            yield from self.collect(steps)

    def attention_length(self) -> int:
        """Cache positions the next chunk reads: what its rows can reach, rounded up on the bucket
        ladder (a few decode programs per run) and at most the cache length."""
        reach = max(row.reach(self.g.chunk_steps) for row in self.slots if row is not None)
        return min(self.cache_length, default_bucket(max(reach, 1)))

    def fill_free_slots(self) -> bool:
        """Prefill waiting prompts into free slots: all B slots in one group when all are filled at
        once, else G at a time (without refill: only when all slots are free). Whether any was filled."""
        free = [s for s, row in enumerate(self.slots) if row is None]
        if not self.g.refill and len(free) < len(self.slots):
            return False
        take = [self.queue.popleft() for _ in range(min(len(free), len(self.queue)))]
        limit = self.g.batch_size
        size = limit if len(take) == limit else self.g.group_size
        for start in range(0, len(take), size):
            group = take[start:start + size]
            width = max(bucket_length(len(self.prompts[i]), self.g.buckets) for i in group)
            tokens = np.zeros((size, width), np.int32)
            lengths = np.ones(size, np.int32)
            slots = np.full(size, limit, np.int32)  # index B: a padding row, dropped
            row_ids = np.zeros(size, np.int32)
            budgets = np.ones(size, np.int32)
            for j, i in enumerate(group):
                prompt = self.prompts[i]
                tokens[j, :len(prompt)], lengths[j], row_ids[j] = prompt, len(prompt), i
                budgets[j] = min(self.params.max_new_tokens, self.g.max_length - len(prompt))
                slots[j] = free[start + j]
                self.slots[slots[j]] = _Row(i, prompt, int(budgets[j]))
            placed = [place(self.g.mesh, a, PartitionSpec(BATCH_AXES)) for a in (tokens, lengths, slots, row_ids, budgets)]
            self.stats.prefill_calls += 1
            self.state = self.g.programs.prefill_into_slots(
                self.g.params, self.state, self.shardings, *placed, self.seed, self.eos, self.rule)
        return bool(take)

    def collect(self, steps: jax.Array | None) -> Iterator[tuple[int, Completion]]:
        """Read the slots' new tokens (after a decode chunk of `steps` steps, or a prefill: None);
        finish rows that sampled EOS, used their budget or completed a stop string."""
        fetched = fetch((self.state.generated, self.state.done, self.state.output, *([] if steps is None else [steps])))
        generated, done, output = fetched[:3]
        self.stats.decode_steps += int(fetched[3]) if steps is not None else 0
        for slot, row in enumerate(self.slots):
            if row is None:
                continue
            tokens = output[slot, : generated[slot]].tolist()
            new = tokens[row.checked:]
            self.stats.generated_tokens += len(new)
            completion = None
            if self.params.stop and (done[slot] or self.trigger_table[new].any()):
                # a finished row is searched from its start, so its text never depends on the trigger table
                checked = 0 if done[slot] else row.checked
                stopped = find_stop(self.g.tokenizer, row.prompt, tokens, self.params.stop, checked)
                if stopped is not None:
                    k, text = stopped
                    completion = Completion(text, tokens[:k], "stop", len(row.prompt))
                    self.stats.discarded_tokens += len(tokens) - k
            if completion is None and done[slot]:
                eos = not self.params.ignore_eos and tokens[-1] in self.g.eos_token_ids
                text = completion_text(self.g.tokenizer, row.prompt, tokens[:-1] if eos else tokens)
                completion = Completion(text, tokens, "eos" if eos else "length", len(row.prompt))
            row.checked = len(tokens)
            if completion is not None:
                self.slots[slot] = None
                yield row.index, completion
