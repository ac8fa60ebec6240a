"""Llama/Mistral decoders in flax.nnx and their Hugging Face / orbax interop."""

from rho_jax.models.config import ModelConfig, RopeParameters
from rho_jax.models.hf import load_hf, read_hf_config, save_hf
from rho_jax.models.llama import Llama, ModelOptions
from rho_jax.models.orbax_io import load_orbax, save_orbax

__all__ = [
    "Llama",
    "ModelConfig",
    "ModelOptions",
    "RopeParameters",
    "load_hf",
    "load_orbax",
    "read_hf_config",
    "save_hf",
    "save_orbax",
]
