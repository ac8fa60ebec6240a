"""`synthesis_generator`: a `Generator` that also ends completions at a template's end-of-turn
tokens, optionally with a PEFT LoRA adapter merged into the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from rho_jax.generation import Generator
from rho_jax.generation.engine import single_device_mesh
from rho_jax.generation.loading import generation_source, generation_tokenizer
from rho_jax.models.lora import merge_lora
from rho_jax.models.lora_peft import load_peft
from rho_jax.synthesis.templates import Template
from rho_jax.training.model_sources import load_model


def synthesis_generator(model_path: str | Path, template: Template, *, adapter: str | Path | None = None,
                        tokenizer: str | None = None, mesh: Mesh | None = None, dtype: Any = None,
                        batch_size: int = 8) -> Generator:
    """A `Generator` for the model at `model_path` (as `load_generator` takes it) whose EOS ids are
    the tokenizer's EOS, the model config's `eos_token_id` and the template's `end_of_turn` tokens
    that the tokenizer has (`<|eot_id|>` of a Llama-3 chat model, for ko-simple-qa).

    adapter: a PEFT LoRA adapter directory (`rho_jax.models.lora_peft.load_peft`), merged into the
    weights (`W + scale * B @ A` in float32, `rho_jax.models.lora.merge_lora`); an adapter made for
    another architecture or size is a ValueError naming the tensor.
    """
    source = generation_source(model_path, dtype)
    loaded = generation_tokenizer(source, tokenizer)
    mesh = mesh if mesh is not None else single_device_mesh()
    model = load_model(source, mesh)
    if adapter is not None:
        model = merge_lora(model, load_peft(adapter, model.config))
    config_eos = model.config.eos_token_id
    ids = [loaded.eos_token_id, *(config_eos if isinstance(config_eos, tuple) else [config_eos]),
           *template.end_token_ids(loaded)]
    return Generator(model, loaded, mesh, batch_size=batch_size, eos_token_ids=[i for i in ids if i is not None])
