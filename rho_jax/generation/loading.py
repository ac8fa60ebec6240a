"""`load_generator`: a `Generator` for any model the trainer loads, with the tokenizer saved beside it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from rho_jax.analysis.models import model_source
from rho_jax.data.tokenizer import load_tokenizer
from rho_jax.generation.engine import Generator, single_device_mesh
from rho_jax.models.hub import parse_hub_id
from rho_jax.models.llama import ModelOptions
from rho_jax.training.config import ModelSource
from rho_jax.training.model_sources import load_model, read_model_config, tokenizer_dir


def generation_source(model_path: str | Path, dtype: Any = None) -> ModelSource:
    """The `ModelSource` of `model_path`: an HF directory, a Hugging Face Hub id (`owner/name[@rev]`,
    when no such path exists), a rho_jax training run, one of its `checkpoints/<step>`, or a rho_jax
    model directory; parameters stored and computed in `dtype` (default float32: decoding reads every
    weight at every step, so bf16 weights halve its memory traffic)."""
    path = str(model_path)
    if not Path(path).exists() and parse_hub_id(path) is not None:
        source = ModelSource(init="hf", path=path)
    else:
        source = model_source(path)
    dtype = dtype or "float32"
    return dataclasses.replace(source, options=ModelOptions(dtype=dtype, param_dtype=dtype))


def generation_tokenizer(source: ModelSource, tokenizer: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer at `tokenizer` (a directory or Hub id), or else the one saved with `source`'s model.

    Raises FileNotFoundError when there is none, ValueError when its vocabulary is larger than the model's.
    """
    vocab_size = read_model_config(source).vocab_size  # first: a missing or invalid model is the error to report
    if tokenizer is None:
        found = tokenizer_dir(source)
        if found is None:
            raise FileNotFoundError(f"{source.path} carries no tokenizer files; pass a tokenizer (--tokenizer DIR).")
        tokenizer = str(found)
    loaded = load_tokenizer(tokenizer)
    if len(loaded) > vocab_size:
        raise ValueError(f"the tokenizer {tokenizer} has {len(loaded)} tokens but the model {source.path} only "
                         f"{vocab_size} (vocab_size): they do not belong together.")
    return loaded


def load_generator(model_path: str | Path, *, tokenizer: str | PreTrainedTokenizerBase | None = None,
                   mesh: Mesh | None = None, dtype: Any = None, batch_size: int = 8, **generator_options: Any) -> Generator:
    """A `Generator` for the model at `model_path` (see `generation_source`) on `mesh` (default: the
    first device), computing in `dtype`, with `batch_size` decode slots; `generator_options` go to
    `Generator` (eos_token_ids, prompt_buckets, max_length, chunk_steps, refill).

    `tokenizer`: a loaded tokenizer, or where to load it from (see `generation_tokenizer`).
    """
    source = generation_source(model_path, dtype)
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        tokenizer = generation_tokenizer(source, tokenizer)
    mesh = mesh if mesh is not None else single_device_mesh()
    return Generator(load_model(source, mesh), tokenizer, mesh, batch_size=batch_size, **generator_options)
