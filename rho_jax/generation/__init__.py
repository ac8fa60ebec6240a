"""Text generation with a KV cache: batched prefill + decode in one jitted loop, stop strings, sampling.

sampling.py  SamplingParams and the next-token choice (greedy, temperature, top-k, top-p)
buckets.py   prompt-length buckets (few compiled prefill programs) and the cache length
stops.py     completion text and stop strings with vLLM's semantics
programs.py  the jitted prefill-into-slots and decode-chunk programs and their device state
engine.py    Generator: schedules prompts over decode slots, yields Completions as rows finish
loading.py   load_generator: a Generator for any model the trainer loads

The cached forward pass of the model itself is `rho_jax.models.kv_cache`.
"""

from rho_jax.generation.engine import Completion, Generator
from rho_jax.generation.loading import load_generator
from rho_jax.generation.sampling import SamplingParams

__all__ = ["Completion", "Generator", "SamplingParams", "load_generator"]
